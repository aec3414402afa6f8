"""The server's keys: the operator's RSA public key (and private key, where it may play)."""

# Data keys live in memory only: a live call's from its start until its recording is stored
# ("pinned": the journals are sealed with it, the finalizer seals the files with it), and the few
# hundred most recently unwrapped ones (jobs and playback read a recording several times in a
# row). Without a private key the server makes and wraps data keys but can never unwrap one.

import os
from collections import OrderedDict
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mediaserver.encryption.envelope import (
    Envelope,
    compute_key_id,
    unwrap_data_key,
    wrap_data_key,
)
from mediaserver.encryption.sealed_object import DATA_KEY_BYTES
from mediaserver.errors import EncryptionKeyUnavailableError, SettingsError

MIN_RSA_BITS = 2048
UNWRAPPED_CACHE_SIZE = 256
NO_PRIVATE_KEY = (
    "this server has no private key (encryption_private_key_path): it stores recordings"
    " encrypted but cannot play them; decrypt them offline with `mediaserver decrypt`"
)


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    """An RSA public key from a PEM file (SubjectPublicKeyInfo or PKCS#1)."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise SettingsError(f"cannot read public key {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise SettingsError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise SettingsError(f"{path} holds a {type(key).__name__}, not an RSA public key")
    _check_size(key.key_size, path)
    return key


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    """An RSA private key from an unencrypted PEM file."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise SettingsError(f"cannot read private key {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SettingsError(f"{path} holds a {type(key).__name__}, not an RSA private key")
    _check_size(key.key_size, path)
    return key


def _check_size(key_bits: int, path: Path) -> None:
    """Refuse RSA keys shorter than MIN_RSA_BITS."""
    if key_bits < MIN_RSA_BITS:
        raise SettingsError(f"{path} is an RSA key of {key_bits} bits: use {MIN_RSA_BITS} or more")


class Keyring:
    """Makes, wraps, pins and unwraps recordings' data keys."""

    def __init__(
        self, public_key: rsa.RSAPublicKey, private_key: rsa.RSAPrivateKey | None = None
    ) -> None:
        """Wrap for `public_key`; unwrap with `private_key` if given (it must be its pair)."""
        self.public_key = public_key
        self.private_key = private_key
        self.key_id = compute_key_id(public_key)
        if private_key is not None and compute_key_id(private_key.public_key()) != self.key_id:
            raise SettingsError("encryption_private_key_path is not the pair of the public key")
        self._pinned: dict[str, tuple[bytes, Envelope]] = {}
        self._unwrapped: OrderedDict[bytes, bytes] = OrderedDict()

    @classmethod
    def load(cls, public_path: Path, private_path: Path | None) -> "Keyring":
        """The keys in these PEM files (SettingsError naming what is wrong)."""
        private = None if private_path is None else load_private_key(private_path)
        return cls(load_public_key(public_path), private)

    @property
    def can_unwrap(self) -> bool:
        """Whether this server may decrypt (it has the private key)."""
        return self.private_key is not None

    def create(self, call_id: str) -> tuple[bytes, Envelope]:
        """A new random data key for a recording, and its envelope."""
        data_key = os.urandom(DATA_KEY_BYTES)
        return data_key, wrap_data_key(self.public_key, call_id, data_key)

    def pin(self, call_id: str, data_key: bytes, envelope: Envelope) -> None:
        """Keep a live call's data key in memory until its recording is stored."""
        self._pinned[call_id] = (data_key, envelope)

    def unpin(self, call_id: str) -> None:
        """Forget a call's data key (its recording is stored)."""
        self._pinned.pop(call_id, None)

    def pinned(self, call_id: str) -> tuple[bytes, Envelope] | None:
        """A live call's data key and envelope, if this process made them."""
        return self._pinned.get(call_id)

    def unwrap(self, envelope: Envelope) -> bytes:
        """An envelope's data key: one this process made, one unwrapped lately, or unwrapped now."""
        pinned = self._pinned.get(envelope.call_id)
        if pinned is not None and pinned[1].wrapped_key == envelope.wrapped_key:
            return pinned[0]
        cached = self._unwrapped.get(envelope.wrapped_key)
        if cached is not None:
            self._unwrapped.move_to_end(envelope.wrapped_key)
            return cached
        if self.private_key is None:
            raise EncryptionKeyUnavailableError(NO_PRIVATE_KEY)
        data_key = unwrap_data_key(self.private_key, envelope)
        self._unwrapped[envelope.wrapped_key] = data_key
        if len(self._unwrapped) > UNWRAPPED_CACHE_SIZE:
            self._unwrapped.popitem(last=False)
        return data_key

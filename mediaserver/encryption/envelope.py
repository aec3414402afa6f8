"""A recording's envelope: its data key wrapped with the operator's RSA public key (pure)."""

# RSAES-OAEP with SHA-256 and MGF1-SHA-256 (RFC 8017 §7.1), no label, as Twilio's encrypted
# recordings use. The envelope names the public key it was wrapped for by the SHA-256 of its
# SubjectPublicKeyInfo (DER), so a server or `mediaserver decrypt` holding another key says so
# instead of failing to decrypt, and `mediaserver rekey` knows which envelopes are done.

import base64
import hashlib
import json
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mediaserver.encryption.sealed_object import DATA_KEY_BYTES
from mediaserver.errors import EncryptionError, EncryptionKeyUnavailableError

ENVELOPE_VERSION = 1
KEY_WRAP = "RSAES-OAEP-SHA256"
CIPHER = "AES-256-GCM"
_OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A wrapped data key and the public key it was wrapped for."""

    call_id: str
    public_key_sha256: str
    wrapped_key: bytes

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps(
            {
                "version": ENVELOPE_VERSION,
                "call_id": self.call_id,
                "cipher": CIPHER,
                "key_wrap": KEY_WRAP,
                "public_key_sha256": self.public_key_sha256,
                "wrapped_key": base64.b64encode(self.wrapped_key).decode("ascii"),
            },
            indent=1,
        )


def parse_envelope(text: str | bytes) -> Envelope:
    """An envelope from its stored form; EncryptionError if it is not one we can use."""
    try:
        data = json.loads(text)
        if data["version"] != ENVELOPE_VERSION or data["key_wrap"] != KEY_WRAP:
            raise EncryptionError(
                f"envelope version {data['version']} key wrap {data['key_wrap']} not supported"
            )
        return Envelope(
            call_id=str(data["call_id"]),
            public_key_sha256=str(data["public_key_sha256"]),
            wrapped_key=base64.b64decode(data["wrapped_key"], validate=True),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise EncryptionError(f"envelope is malformed: {exc}") from None


def compute_key_id(public_key: rsa.RSAPublicKey) -> str:
    """SHA-256 hex of a public key's SubjectPublicKeyInfo (DER)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def wrap_data_key(public_key: rsa.RSAPublicKey, call_id: str, data_key: bytes) -> Envelope:
    """Wrap a recording's data key for the holder of the private key."""
    return Envelope(call_id, compute_key_id(public_key), public_key.encrypt(data_key, _OAEP))


def unwrap_data_key(private_key: rsa.RSAPrivateKey, envelope: Envelope) -> bytes:
    """The data key inside an envelope; errors say whose key it needs."""
    key_id = compute_key_id(private_key.public_key())
    if envelope.public_key_sha256 != key_id:
        raise EncryptionKeyUnavailableError(
            f"recording {envelope.call_id}'s data key is wrapped for public key"
            f" {envelope.public_key_sha256[:16]}…, not this private key's {key_id[:16]}…"
            " (after a key change, run `mediaserver rekey` with the old private key)"
        )
    try:
        data_key = private_key.decrypt(envelope.wrapped_key, _OAEP)
    except ValueError:
        raise EncryptionError(
            f"recording {envelope.call_id}'s wrapped data key is damaged"
        ) from None
    if len(data_key) != DATA_KEY_BYTES:
        raise EncryptionError(f"recording {envelope.call_id}'s data key has the wrong length")
    return data_key

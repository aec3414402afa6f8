"""API tokens: the single api_token and the scoped tokens file, looked up in constant time."""

# The tokens file holds no secret: each [[tokens]] table names a token, the hex SHA-256 of its
# secret and its scopes. A presented token is hashed once and compared with every entry's digest
# with hmac.compare_digest, all entries every time, so neither the digests nor which entry matched
# leak through timing. Secrets are high-entropy random strings (`mediaserver new-token` makes
# them), so a plain SHA-256 is the right hash: a password hash (slow, salted) guards guessable
# secrets, which these are not, and would cost every request milliseconds.

import hashlib
import hmac
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from mediaserver.errors import SettingsError

API_TOKEN_NAME = "api_token"
ANONYMOUS_NAME = "anonymous"
TOKEN_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class Scope(Enum):
    """What a token may do."""

    CALLS = "calls"  # create and end calls, WHIP, plain-RTP legs, agent sockets
    RECORDINGS_READ = "recordings:read"  # list, fetch, play recordings, analyses, transcripts
    RECORDINGS_DELETE = "recordings:delete"  # delete recordings
    ADMIN = "admin"  # legal holds, the audit log, metrics


ALL_SCOPES = frozenset(Scope)


@dataclass(frozen=True, slots=True)
class Principal:
    """The identity a request acts as: a token's name and what it may do."""

    name: str
    scopes: frozenset[Scope]

    def allows(self, scope: Scope | None) -> bool:
        """Whether this identity holds `scope` (None: any signed-in identity)."""
        return scope is None or scope in self.scopes

    def scope_names(self) -> list[str]:
        """The scopes' names, sorted."""
        return sorted(scope.value for scope in self.scopes)


# Without any token configured (loopback only), every request acts as this.
ANONYMOUS = Principal(ANONYMOUS_NAME, ALL_SCOPES)


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One token: its name, the SHA-256 digest of its secret, its scopes."""

    name: str
    digest: bytes
    scopes: frozenset[Scope]

    @property
    def principal(self) -> Principal:
        """The identity this token acts as."""
        return Principal(self.name, self.scopes)


def compute_token_digest(secret: str | bytes) -> bytes:
    """SHA-256 of a token's secret."""
    return hashlib.sha256(secret.encode() if isinstance(secret, str) else secret).digest()


def parse_scopes(values: object, where: str) -> frozenset[Scope]:
    """A token's scopes from a list of names; SettingsError names the bad one."""
    if not isinstance(values, list) or not values:
        raise SettingsError(f"{where}: scopes must be a non-empty list")
    scopes = set()
    for value in values:
        try:
            scopes.add(Scope(value))
        except ValueError:
            choices = ", ".join(scope.value for scope in Scope)
            raise SettingsError(f"{where}: unknown scope {value!r} (one of {choices})") from None
    return frozenset(scopes)


def parse_tokens_file(text: str, source: str) -> list[TokenEntry]:
    """The [[tokens]] tables of a tokens file; SettingsError says what is wrong and where."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"tokens file {source} is not valid TOML: {exc}") from None
    unknown = set(document) - {"tokens"}
    if unknown:
        names = ", ".join(sorted(unknown))
        raise SettingsError(f"tokens file {source} has unknown key(s): {names}")
    tables = document.get("tokens", [])
    if not isinstance(tables, list):
        raise SettingsError(f"tokens file {source}: tokens must be [[tokens]] tables")
    entries: list[TokenEntry] = []
    for number, table in enumerate(tables, start=1):
        where = f"tokens file {source}, token {number}"
        if not isinstance(table, dict):
            raise SettingsError(f"{where} is not a table")
        extra = set(table) - {"name", "sha256", "scopes"}
        if extra:
            raise SettingsError(f"{where} has unknown key(s): {', '.join(sorted(extra))}")
        name = table.get("name")
        if not isinstance(name, str) or not TOKEN_NAME_PATTERN.fullmatch(name):
            raise SettingsError(f"{where}: name must be 1-64 characters of [A-Za-z0-9_-]")
        digest_hex = table.get("sha256")
        if not isinstance(digest_hex, str) or not _SHA256_HEX.fullmatch(digest_hex.lower()):
            raise SettingsError(
                f"{where} ({name}): sha256 must be the 64 hex digits of the secret's SHA-256"
            )
        scopes = parse_scopes(table.get("scopes"), f"{where} ({name})")
        entries.append(TokenEntry(name, bytes.fromhex(digest_hex), scopes))
    return entries


class TokenTable:
    """Every token the server accepts, looked up by secret or by name."""

    def __init__(self, entries: Iterable[TokenEntry]) -> None:
        """Accept these tokens; names must be unique."""
        self.entries = tuple(entries)
        names = [entry.name for entry in self.entries]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise SettingsError(f"token names must be unique: {', '.join(duplicates)}")
        self._by_name = {entry.name: entry for entry in self.entries}

    @classmethod
    def build(cls, api_token: str, file_entries: Iterable[TokenEntry] = ()) -> "TokenTable":
        """The api_token (every scope, named api_token) and the tokens file's entries."""
        entries = list(file_entries)
        if api_token:
            digest = compute_token_digest(api_token)
            entries.insert(0, TokenEntry(API_TOKEN_NAME, digest, ALL_SCOPES))
        return cls(entries)

    @property
    def is_open(self) -> bool:
        """No token at all: every request is let in (the server then listens on loopback only)."""
        return not self.entries

    def authenticate(self, secret: bytes | str) -> Principal | None:
        """The identity of a presented secret, or None; constant time over every entry."""
        digest = compute_token_digest(secret)
        found: TokenEntry | None = None
        for entry in self.entries:
            # No early exit: the time taken does not depend on which entry matched, if any.
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry
        return None if found is None else found.principal

    def find(self, name: str) -> TokenEntry | None:
        """The entry with this name (a session names its token)."""
        return self._by_name.get(name)

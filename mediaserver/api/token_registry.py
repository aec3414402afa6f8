"""The tokens the server accepts now: api_token plus the tokens file, reloaded when it changes."""

# The file is read at start (a bad file stops the server, naming what is wrong) and checked again
# at most every RELOAD_CHECK_S: a changed file (mtime, size) is read again, so adding or revoking a
# token needs no restart. A file that turns bad keeps the last good table and logs an error. The
# check is one stat() of a small file every few seconds: too small to move off the event loop.

import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from mediaserver.access.tokens import TokenTable, parse_tokens_file
from mediaserver.errors import SettingsError

log = structlog.get_logger(__name__)

RELOAD_CHECK_S = 2.0


def read_tokens_file(path: Path) -> TokenTable:
    """Parse the tokens file at `path` (without the api_token)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read tokens file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"tokens file {path} is not UTF-8") from None
    return TokenTable(parse_tokens_file(text, str(path)))


class TokenRegistry:
    """The current TokenTable."""

    def __init__(
        self,
        api_token: str,
        tokens_path: Path | None,
        *,
        monotonic_s: Callable[[], float] = time.monotonic,
    ) -> None:
        """Load the tokens file now (SettingsError if it is unusable)."""
        self._api_token = api_token
        self._path = tokens_path
        self._monotonic_s = monotonic_s
        self._signature: tuple[int, int] | None = None
        self._checked_at_s = monotonic_s()
        self._table = self._load()

    @property
    def table(self) -> TokenTable:
        """Every token accepted now (the file re-read if it changed since the last check)."""
        now_s = self._monotonic_s()
        if self._path is not None and now_s - self._checked_at_s >= RELOAD_CHECK_S:
            self._checked_at_s = now_s
            self._reload_if_changed()
        return self._table

    def _load(self) -> TokenTable:
        """The api_token and the file's tokens."""
        if self._path is None:
            return TokenTable.build(self._api_token)
        try:
            self._signature = _file_signature(self._path)  # before reading: a change is seen
        except OSError as exc:
            raise SettingsError(f"cannot read tokens file {self._path}: {exc.strerror}") from None
        return TokenTable.build(self._api_token, read_tokens_file(self._path).entries)

    def _reload_if_changed(self) -> None:
        """Read the file again if its modification time or size changed."""
        assert self._path is not None
        try:
            signature = _file_signature(self._path)
        except OSError as exc:
            log.error("auth.tokens_file_unreadable", path=str(self._path), error=exc.strerror)
            return
        if signature == self._signature:
            return
        try:
            self._table = self._load()
        except (SettingsError, OSError) as exc:
            log.error("auth.tokens_file_rejected", path=str(self._path), error=str(exc))
            return
        log.info("auth.tokens_reloaded", path=str(self._path), tokens=len(self._table.entries))


def _file_signature(path: Path) -> tuple[int, int]:
    """(modification time in ns, size) of a file."""
    status = os.stat(path)
    return status.st_mtime_ns, status.st_size

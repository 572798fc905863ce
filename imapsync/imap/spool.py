# -*- test-case-name: tests.test_imap_spool -*-
"""Message bodies too large to hold in memory, kept in an unnamed file.

A literal of `SPOOL_AT` bytes or more is written to an anonymous
temporary file (``O_TMPFILE`` where the system has it: no directory
entry, mode 0600, gone when closed) as it arrives, and its SHA-256 is
computed on the way; an APPEND then streams it back from the file.  The
process never holds such a message whole, so the memory used to copy a
50 MiB message is a few buffers, not 50 MiB per copy of it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Optional, Union

__all__ = ["SPOOL_AT", "Body", "SpooledBody", "body_digest", "release"]

# Literals from this size on are spooled.  Below it, a MULTIAPPEND batch
# (1 MiB) bounds what is held anyway, and a file would only cost system
# calls.
SPOOL_AT = 1024 * 1024


class SpooledBody:
    """The bytes of one literal, in an unnamed temporary file.

    Written once, front to back, by `write` then `finish`; read any number
    of times with `read`.  ``len()`` is its size, `digest` its SHA-256.
    """

    __slots__ = ("_file", "_hash", "_size", "_digest")

    def __init__(self, directory: Optional[str] = None) -> None:
        # buffering=0: each write goes to the file, nothing is kept here.
        self._file = tempfile.TemporaryFile(prefix="imapsync-", dir=directory, buffering=0)
        self._hash = hashlib.sha256()
        self._size = 0
        self._digest = b""

    def write(self, data: Union[bytes, memoryview]) -> None:
        self._file.write(data)
        self._hash.update(data)
        self._size += len(data)

    def finish(self) -> None:
        """The last byte was written."""
        self._digest = self._hash.digest()

    def __len__(self) -> int:
        return self._size

    def digest(self) -> bytes:
        """SHA-256 of the bytes, as ``hashlib.sha256(body).digest()``."""
        return self._digest

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` (fewer only at the end)."""
        return os.pread(self._file.fileno(), size, offset)

    def getvalue(self) -> bytes:
        """All the bytes, in memory (for tests and small checks)."""
        return self.read(0, self._size)

    def close(self) -> None:
        self._file.close()

    def __repr__(self) -> str:
        return f"<SpooledBody {self._size} bytes>"


# What a FETCH delivers as a message body and an APPEND takes.
Body = Union[bytes, SpooledBody]


def body_digest(body: Body) -> bytes:
    """SHA-256 of a message body, however it is held."""
    if isinstance(body, SpooledBody):
        return body.digest()
    return hashlib.sha256(body).digest()


def release(body: Body) -> None:
    """Free what holds ``body`` now rather than when it is collected."""
    if isinstance(body, SpooledBody):
        body.close()

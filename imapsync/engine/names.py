# -*- test-case-name: tests.test_engine_names -*-
"""Mailbox names: wire names of each side versus the database's form.

The database stores a name with the hierarchy delimiter replaced by NUL
(interimap's convention), below the side's ``list-reference`` prefix, so
two servers with different delimiters and prefixes share one name.
"""

from __future__ import annotations

import re
from typing import Optional, Pattern, Sequence

import attrs

from imapsync.imap.utf7 import MailboxNameError, decode_mailbox

DB_DELIMITER = b"\0"


class MailboxNameConflictError(ValueError):
    """A name cannot be written on a side (it holds that side's delimiter)."""


@attrs.frozen
class Namespace:
    """How one side writes mailbox names: its delimiter and reference prefix."""

    delimiter: Optional[bytes]
    reference: bytes = b""

    def to_db(self, wire: bytes) -> Optional[bytes]:
        """The database form of ``wire``, or None when outside the reference.

        Below a reference, INBOX is an ordinary name (``Backup.INBOX``), as
        in interimap.
        """
        if wire.upper() == b"INBOX" and not self.reference:
            return b"INBOX"
        if self.reference:
            if not wire.startswith(self.reference) or wire == self.reference:
                return None
            wire = wire[len(self.reference) :]
        if self.delimiter:
            if DB_DELIMITER in wire:
                raise MailboxNameConflictError(f"mailbox name {display(wire)!r} holds a NUL byte")
            return wire.replace(self.delimiter, DB_DELIMITER)
        return wire

    def to_wire(self, name: bytes) -> bytes:
        """The wire name of the database name ``name`` on this side."""
        if name == b"INBOX" and not self.reference:
            return b"INBOX"
        if self.delimiter:
            if self.delimiter in name:
                raise MailboxNameConflictError(
                    "mailbox {} cannot be created on a server whose hierarchy delimiter is {!r}:"
                    " its name holds that character".format(
                        display(name), self.delimiter.decode("ascii", "replace")
                    )
                )
            wire = name.replace(DB_DELIMITER, self.delimiter)
        else:
            if DB_DELIMITER in name:
                raise MailboxNameConflictError(
                    f"mailbox {display(name)} is hierarchical but this server's namespace is flat"
                )
            wire = name
        return self.reference + wire


def display(name: bytes, delimiter: bytes = b"/") -> str:
    """A human-readable form of a (database or wire) mailbox name."""
    text = name.replace(DB_DELIMITER, delimiter)
    try:
        return decode_mailbox(text)
    except (MailboxNameError, ValueError):
        return text.decode("ascii", "backslashreplace")


def wildcard_regex(patterns: Sequence[bytes], delimiter: Optional[bytes]) -> Pattern[bytes]:
    """A regex matching what LIST would return for ``patterns`` (``*`` and ``%``)."""
    alternatives = []
    for pattern in patterns:
        out = []
        for byte in pattern:
            char = bytes([byte])
            if char == b"*":
                out.append(b".*")
            elif char == b"%":
                out.append(b"[^" + re.escape(delimiter) + b"]*" if delimiter else b".*")
            else:
                out.append(re.escape(char))
        alternatives.append(b"".join(out))
    return re.compile(b"(?:" + b"|".join(alternatives) + b")\\Z", re.DOTALL)

# -*- test-case-name: tests.test_imap_parser -*-
"""Value objects for parsed server responses (what the parser emits).

Everything from the wire stays ``bytes``; numbers are ``int``.  Atom-like
names (response names, codes, capabilities, STATUS items) are upper-cased;
flags, mailbox names and free text keep the server's spelling.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import attrs

from imapsync.imap.spool import Body
from imapsync.imap.uidset import UIDSet

# A parsed token of the generic grammar: an atom/quoted/literal string
# (bytes), NIL (None), or a parenthesized list.
Token = Union[bytes, None, List["Token"]]


@attrs.frozen
class ResponseCode:
    """A bracketed response code such as ``[UIDVALIDITY 3]``.

    ``value`` by ``name``:
    UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, UNSEEN -> int;
    APPENDUID -> (uidvalidity, tuple of UIDs in append order);
    COPYUID -> (uidvalidity, source UIDs tuple, destination UIDs tuple);
    MODIFIED -> UIDSet; CAPABILITY, PERMANENTFLAGS, BADCHARSET -> tuple of bytes
    (capabilities upper-cased); codes without argument (CLOSED, NOMODSEQ,
    UIDNOTSTICKY, NOTIFICATIONOVERFLOW, ALERT, TRYCREATE, READ-ONLY, ...) -> None;
    anything else -> the raw argument bytes (or None).
    """

    name: bytes
    value: object = None


@attrs.frozen
class TaggedResponse:
    """``tag OK|NO|BAD [code] text``."""

    tag: bytes
    status: bytes
    code: Optional[ResponseCode]
    text: bytes


@attrs.frozen
class ContinuationRequest:
    """``+ text`` (or ``+ base64`` during SASL)."""

    text: bytes


@attrs.frozen
class ConditionResponse:
    """Untagged ``* OK|NO|BAD|BYE|PREAUTH [code] text``."""

    status: bytes
    code: Optional[ResponseCode]
    text: bytes


@attrs.frozen
class CapabilityResponse:
    """``* CAPABILITY ...`` (capabilities upper-cased)."""

    capabilities: Tuple[bytes, ...]


@attrs.frozen
class EnabledResponse:
    """``* ENABLED ...`` (RFC 5161; upper-cased)."""

    capabilities: Tuple[bytes, ...]


@attrs.frozen
class NumberResponse:
    """``* n EXISTS``, ``* n EXPUNGE``, ``* n RECENT``."""

    name: bytes
    number: int


@attrs.frozen
class FlagsResponse:
    """``* FLAGS (...)``."""

    flags: Tuple[bytes, ...]


@attrs.frozen
class FetchResponse:
    """``* seq FETCH (...)``.

    Known items are decoded into fields (None when absent); ``body`` is the
    ``BODY[]`` (or ``RFC822``) literal; ``internaldate`` stays the raw quoted
    string, e.g. ``b"17-Jul-1996 02:44:25 -0700"``; ``extra`` holds any other
    item, keyed by its upper-cased name (e.g. ``b"BODY[HEADER]"``).
    """

    seq: int
    uid: Optional[int] = None
    modseq: Optional[int] = None
    flags: Optional[Tuple[bytes, ...]] = None
    internaldate: Optional[bytes] = None
    size: Optional[int] = None
    body: Optional[Body] = None
    extra: Dict[bytes, Token] = attrs.field(factory=dict)


@attrs.frozen
class VanishedResponse:
    """``* VANISHED [(EARLIER)] uid-set`` (RFC 7162)."""

    earlier: bool
    uids: UIDSet


@attrs.frozen
class ListResponse:
    """``* LIST (attrs) delim name [(extended items)]`` (also LSUB).

    ``mailbox`` is the wire name (modified UTF-7), with ``INBOX`` in any case
    normalized to ``b"INBOX"``; ``delimiter`` is None for NIL.
    ``extended`` maps upper-cased tags (``CHILDINFO``, ``OLDNAME``) to tokens.
    """

    name: bytes  # b"LIST" or b"LSUB"
    attributes: Tuple[bytes, ...]
    delimiter: Optional[bytes]
    mailbox: bytes
    extended: Dict[bytes, Token] = attrs.field(factory=dict)

    def has_attribute(self, attribute: bytes) -> bool:
        wanted = attribute.lower()
        return any(a.lower() == wanted for a in self.attributes)


@attrs.frozen
class StatusResponse:
    """``* STATUS mailbox (ITEM n ...)``."""

    mailbox: bytes
    items: Dict[bytes, int]


@attrs.frozen
class ESearchResponse:
    """``* ESEARCH [(TAG "t")] [UID] items`` (RFC 4731).

    ``items``: ALL -> UIDSet; MIN, MAX, COUNT, MODSEQ -> int; others raw.
    """

    tag: Optional[bytes]
    uid: bool
    items: Dict[bytes, object]


@attrs.frozen
class UntaggedResponse:
    """Any other untagged response: its name, optional leading number and tokens."""

    name: bytes
    number: Optional[int]
    args: Tuple[Token, ...]


Response = Union[
    TaggedResponse,
    ContinuationRequest,
    ConditionResponse,
    CapabilityResponse,
    EnabledResponse,
    NumberResponse,
    FlagsResponse,
    FetchResponse,
    VanishedResponse,
    ListResponse,
    StatusResponse,
    ESearchResponse,
    UntaggedResponse,
]

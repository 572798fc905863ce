# -*- test-case-name: tests.test_fakeserver -*-
"""An in-memory IMAP server that speaks like Dovecot 2.3, for fast engine tests.

A small but real server, with its own command parser (nothing shared with
our client): CONDSTORE/QRESYNC, LIST-EXTENDED/LIST-STATUS, MULTIAPPEND,
UIDPLUS, ESEARCH, NOTIFY, UNSELECT, ID, LOGIN and AUTHENTICATE PLAIN.  Its
bytes were compared with Dovecot 2.3.19's for the same command scripts
(flag order, response codes and texts, \\Noselect parents, the QRESYNC
SELECT layout, when unsolicited data comes).

- `MailStore`: one account (mailboxes by wire name, messages, MODSEQs,
  subscriptions) and a manipulation API (``append``, ``set_flags``,
  ``expunge``, ``create``, ``rename``, ``delete``, ``reset_uidvalidity``,
  ...) that notifies connected sessions as a real server does: EXISTS,
  FETCH and VANISHED for the selected mailbox at their next command
  completion, NOTIFY events at once.  ``snapshot()`` compares stores.
- `FakeIMAPServer`: one Protocol per connection, bound to a store.
- `FaultPlan` (``store.faults`` for every connection, ``server.faults``
  for one): hooks run before each command, which may change the store or
  drop the connection before or after executing the command, hang, or
  answer NO.
- `FakeNetwork`, `connect_session`, `run`: our real client joined to
  fake servers in memory with `twisted.test.iosim`.

Engine tests: nothing moves unless the test pumps, so drive the engine's
Deferred with `run` (here through `FakeNetwork`)::

    def test_new_message_is_copied(self) -> None:
        clock = Clock()
        net = FakeNetwork(clock)
        local, remote = MailStore(), MailStore(separator=b".")
        local.append(b"INBOX", MESSAGE, [b"\\Seen"])
        lsession = net.connect(local, "local")
        rsession = net.connect(remote, "remote")
        net.run(Deferred.fromCoroutine(sync(lsession, rsession, db)))
        self.assertEqual(local.snapshot(), remote.snapshot())

`run` moves bytes on every connection until the Deferred fires, then
returns its result or raises its failure.  When no byte moves it advances
the Clock to the next timer (an engine waiting on a timer goes on; a hung
exchange ends as the client's CommandTimeoutError, not a hung test); with
no timer either it raises at once.  Between runs, change the stores
directly.  To change a store at an exact point during a run (the other
client's concurrent change), hook a command::

    remote.on_command(lambda name, raw: remote.append(b"INBOX", MESSAGE)
                      if name == b"UID FETCH" else None)

Crash tests: ``remote.faults.drop_after(b"APPEND")`` makes the run raise
ConnectionLostError with the messages stored but their APPENDUID never
seen; connect again, run the engine again, compare snapshots.  An engine
that opens connections itself gets ``lambda: net.open(store, "remote")``:
the Deferred `FakeNetwork.open` returns fires as the current run pumps.

Known differences from Dovecot 2.3.19:

- MODSEQs: one per transaction from the start (a MULTIAPPEND is one, a
  STORE touching system flags and keywords two, as Dovecot), whereas
  Dovecot numbers them lazily until CONDSTORE is first used on a mailbox,
  and then also sends HIGHESTMODSEQ to sessions that did not enable it.
- INBOX always exists and is listed first; Dovecot lists in index order
  and creates INBOX lazily (a first CREATE INBOX succeeds).  No
  ``\\UnMarked``, no LIST RECURSIVEMATCH/CHILDINFO, no LSUB.
- NOTIFY: events for the selected mailbox always wait for the next
  command (Dovecot sometimes pushes them when SELECT came before NOTIFY
  SET); STATUS events never carry UIDVALIDITY, except after
  ``reset_uidvalidity`` (Dovecot adds it for a mailbox never opened); no
  spurious ``LIST () "/" INBOX``.  The silence after a NOTIFY SET that
  replaces another is reproduced (``notify_quirk``).
- A literal is read whole before its command runs: a BAD APPEND does not
  desynchronize the stream, and ``+ OK`` is sent even for a missing
  mailbox.  INTERNALDATEs are kept in UTC; future ones are not clamped.
- No STARTTLS, COMPRESS, IDLE, MOVE, COPY, BODY sections or partial
  fetches, ENVELOPE; no authentication failure delay.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import calendar
import datetime
import enum
import hashlib
import itertools
import re
import time
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
)

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.test import iosim

from imapsync.imap._protocol import DEFAULT_TIMEOUT, DEFAULT_WINDOW, IMAP4ClientProtocol
from imapsync.imap.session import IMAPSession

__all__ = [
    "DEFAULT_CAPABILITIES",
    "PRELOGIN_CAPABILITIES",
    "FakeIMAPServer",
    "FakeNetwork",
    "Fault",
    "FaultPlan",
    "MailStore",
    "MailStoreError",
    "Mailbox",
    "Message",
    "Reply",
    "connect_session",
    "mutf7_decode",
    "mutf7_encode",
    "run",
]

T = TypeVar("T")

#: What Dovecot 2.3 offers after login, restricted to what the fake implements.
DEFAULT_CAPABILITIES: Tuple[bytes, ...] = tuple(
    b"IMAP4rev1 LITERAL+ ENABLE UIDPLUS MULTIAPPEND CONDSTORE QRESYNC LIST-EXTENDED "
    b"LIST-STATUS ESEARCH NOTIFY UNSELECT ID SASL-IR AUTH=PLAIN".split()
)
#: What Dovecot's login process offers before authentication.
PRELOGIN_CAPABILITIES: Tuple[bytes, ...] = tuple(
    b"IMAP4rev1 SASL-IR ID ENABLE LITERAL+ AUTH=PLAIN".split()
)

SYSTEM_FLAGS: Tuple[bytes, ...] = (
    b"\\Answered",
    b"\\Flagged",
    b"\\Deleted",
    b"\\Seen",
    b"\\Draft",
)
_SYSTEM_BY_UPPER = {flag.upper(): flag for flag in SYSTEM_FLAGS}
_RECENT = b"\\Recent"
_SEEN = b"\\Seen"
_DELETED = b"\\Deleted"

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DATE = re.compile(
    rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})"
)
_ATOM_OUT = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')
_KEYWORD = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
_LITERAL = re.compile(rb"~?\{(\d+)(\+?)\}\r\n")
_LITERAL_AT_END = re.compile(rb"~?\{(\d+)(\+?)\}\Z")
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
_COMMAND_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9-]*")
_STORE_ITEM = re.compile(rb"([+-]?)FLAGS(\.SILENT)?")
_STATUS_ORDER = (b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN", b"HIGHESTMODSEQ")

# Each new store numbers its UIDVALIDITYs from its own base, so two stores
# in one test never share one (an engine mixing up sides gets caught).
_uidvalidity_bases = itertools.count(1000, 1000)


# --- wire helpers ---------------------------------------------------------------


class _Atom(bytes):
    """A command argument sent as an atom (flags, keywords, wildcards, numbers)."""


class _String(bytes):
    """A command argument sent as a quoted string or a literal."""


class _LiteralString(_String):
    """A command argument sent as a literal."""


Token = Union[bytes, List[Any]]


class _Bad(Exception):
    """Answer the command BAD; ``bare`` texts get no "Error in IMAP command" prefix."""

    def __init__(self, text: bytes, bare: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.bare = bare


class _No(Exception):
    def __init__(self, text: bytes, code: Optional[bytes] = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class MailStoreError(Exception):
    """The store refuses an operation; a server answers NO [code] text."""

    def __init__(self, text: bytes, code: Optional[bytes] = None) -> None:
        super().__init__(text.decode("utf-8", "replace"))
        self.text = text
        self.code = code


def _tokenize(data: bytes, pos: int) -> List[Token]:
    """Parse command arguments: atoms, strings, literals, parenthesized lists."""
    top: List[Token] = []
    current = top
    stack: List[List[Token]] = []
    end = len(data)
    while pos < end:
        char = data[pos]
        if char == 0x20:
            pos += 1
        elif char in (0x0D, 0x0A):
            break
        elif char == 0x28:
            inner: List[Token] = []
            current.append(inner)
            stack.append(current)
            current = inner
            pos += 1
        elif char == 0x29:
            if not stack:
                raise _Bad(b"Unexpected ')'")
            current = stack.pop()
            pos += 1
        elif char == 0x22:
            out = bytearray()
            pos += 1
            while True:
                if pos >= end or data[pos] in (0x0D, 0x0A):
                    raise _Bad(b"Missing '\"'")
                char = data[pos]
                if char == 0x5C:
                    if pos + 1 >= end:
                        raise _Bad(b"Missing '\"'")
                    out.append(data[pos + 1])
                    pos += 2
                    continue
                pos += 1
                if char == 0x22:
                    break
                out.append(char)
            current.append(_String(bytes(out)))
        else:
            match = _LITERAL.match(data, pos)
            if match is not None:
                start = match.end()
                size = int(match.group(1))
                if start + size > end:
                    raise _Bad(b"Truncated literal")
                current.append(_LiteralString(data[start : start + size]))
                pos = start + size
                continue
            start = pos
            depth = 0
            while pos < end:
                char = data[pos]
                if char in (0x0D, 0x0A):
                    break
                if char == 0x5B:
                    depth += 1
                elif char == 0x5D and depth:
                    depth -= 1
                elif depth == 0 and char in (0x20, 0x28, 0x29, 0x22):
                    break
                pos += 1
            current.append(_Atom(data[start:pos]))
    if stack:
        raise _Bad(b"Missing ')'")
    return top


def _word(token: Token) -> bytes:
    """An atom's upper-cased value (keywords of the grammar)."""
    if not isinstance(token, _Atom):
        raise _Bad(b"Invalid arguments")
    return bytes(token).upper()


def _astring(token: Token) -> bytes:
    if isinstance(token, list):
        raise _Bad(b"Invalid arguments")
    return bytes(token)


def _number(token: Token) -> int:
    if not isinstance(token, _Atom) or not token.isdigit():
        raise _Bad(b"Invalid number")
    return int(token)


def _format_astring(value: bytes) -> bytes:
    """A name as Dovecot writes it: an atom when it can, else quoted or a literal."""
    if _ATOM_OUT.fullmatch(value) and value.upper() != b"NIL":
        return value
    if re.search(rb"[\r\n\x00\x80-\xff]", value):
        return b"{%d}\r\n" % len(value) + value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@attrs.frozen
class _Ranges:
    """A parsed sequence set: sorted, merged, inclusive ranges."""

    ranges: Tuple[Tuple[int, int], ...]

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, int):
            return False
        i = bisect.bisect_right(self.ranges, (number, float("inf"))) - 1
        return i >= 0 and self.ranges[i][0] <= number <= self.ranges[i][1]


def _parse_set(text: Token, star: int) -> _Ranges:
    if not isinstance(text, _Atom):
        raise _Bad(b"Invalid messageset")
    pairs: List[Tuple[int, int]] = []
    for part in bytes(text).split(b","):
        bounds = part.split(b":")
        if len(bounds) not in (1, 2):
            raise _Bad(b"Invalid messageset")
        values = []
        for bound in bounds:
            if bound == b"*":
                values.append(star)
            elif bound.isdigit() and int(bound) > 0:
                values.append(int(bound))
            else:
                raise _Bad(b"Invalid messageset")
        pairs.append((min(values), max(values)))
    pairs.sort()
    merged: List[Tuple[int, int]] = []
    for low, high in pairs:
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return _Ranges(tuple(merged))


def _format_set(numbers: Iterable[int]) -> bytes:
    """``1:3,5`` for [1, 2, 3, 5]."""
    parts: List[bytes] = []
    run_start: Optional[int] = None
    previous = 0
    for number in sorted(set(numbers)):
        if run_start is not None and number == previous + 1:
            previous = number
            continue
        if run_start is not None:
            parts.append(_range_bytes(run_start, previous))
        run_start = previous = number
    if run_start is not None:
        parts.append(_range_bytes(run_start, previous))
    return b",".join(parts)


def _range_bytes(low: int, high: int) -> bytes:
    return b"%d" % low if low == high else b"%d:%d" % (low, high)


def mutf7_encode(text: str) -> bytes:
    """Modified UTF-7 (RFC 3501 5.1.3), for mailbox names."""
    out = bytearray()
    pending: List[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.extend(b"&" + base64.b64encode(data).rstrip(b"=").replace(b"/", b",") + b"-")
            pending.clear()

    for char in text:
        if "\x20" <= char <= "\x7e":
            flush()
            out.extend(b"&-" if char == "&" else char.encode("ascii"))
        else:
            pending.append(char)
    flush()
    return bytes(out)


def mutf7_decode(name: bytes) -> str:
    """Decode a modified UTF-7 name; ValueError unless it is in canonical form."""
    out: List[str] = []
    i = 0
    while i < len(name):
        char = name[i]
        if char == 0x26:
            end = name.find(b"-", i + 1)
            if end < 0:
                raise ValueError("unterminated &")
            chunk = name[i + 1 : end]
            if not chunk:
                out.append("&")
            else:
                if not re.fullmatch(rb"[A-Za-z0-9+,]+", chunk):
                    raise ValueError("bad modified base64")
                raw = base64.b64decode(chunk.replace(b",", b"/") + b"=" * (-len(chunk) % 4))
                if len(raw) % 2:
                    raise ValueError("odd UTF-16 length")
                out.append(raw.decode("utf-16-be"))
            i = end + 1
        elif 0x20 <= char <= 0x7E:
            out.append(chr(char))
            i += 1
        else:
            raise ValueError("8-bit or control character")
    text = "".join(out)
    if mutf7_encode(text) != name:
        raise ValueError("not in canonical form")
    return text


def _parse_date(value: bytes) -> float:
    match = _DATE.fullmatch(value)
    if match is None:
        raise ValueError("bad date")
    day, month_name, year, hour, minute, second, sign, tz_h, tz_m = match.groups()
    month = month_name.decode("ascii").capitalize()
    if month not in _MONTHS:
        raise ValueError("bad month")
    stamp = calendar.timegm(
        (int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute), int(second))
    )
    offset = (int(tz_h) * 60 + int(tz_m)) * 60
    return float(stamp - offset if sign == b"+" else stamp + offset)


def _format_date(stamp: float) -> bytes:
    """An INTERNALDATE in UTC, as Dovecot in a UTC zone writes it."""
    t = time.gmtime(stamp)
    return b"%02d-%s-%04d %02d:%02d:%02d +0000" % (
        t.tm_mday,
        _MONTHS[t.tm_mon - 1].encode("ascii"),
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


def _check_flags(flags: Iterable[bytes]) -> None:
    """Raise _Bad as Dovecot does for flags no client may set."""
    for flag in flags:
        if flag.startswith(b"\\"):
            if flag.upper() not in _SYSTEM_BY_UPPER:
                raise _Bad(b"Invalid system flag " + flag.upper())
        elif not _KEYWORD.fullmatch(flag):
            raise _Bad(b"Invalid keyword " + flag)


def _canonical_flags(flags: Iterable[bytes], keywords: List[bytes]) -> Set[bytes]:
    """System flags spelled canonically; keywords matched case-insensitively
    to the mailbox's known ones (new ones are recorded)."""
    out: Set[bytes] = set()
    for flag in flags:
        if flag.startswith(b"\\"):
            out.add(_SYSTEM_BY_UPPER[flag.upper()])
            continue
        lowered = flag.lower()
        for known in keywords:
            if known.lower() == lowered:
                out.add(known)
                break
        else:
            keywords.append(flag)
            out.add(flag)
    return out


# --- the store --------------------------------------------------------------------


@attrs.define(eq=False)
class Message:
    """One message: its body, flags (never ``\\Recent``), INTERNALDATE (UTC) and MODSEQ."""

    body: bytes
    flags: Set[bytes] = attrs.field(factory=set)
    internaldate: bytes = b"01-Jan-2024 00:00:00 +0000"
    modseq: int = 1


@attrs.define(eq=False)
class Mailbox:
    """A selectable mailbox.  ``expunged``: UID -> MODSEQ of its expunge."""

    uidvalidity: int
    uidnext: int = 1
    highestmodseq: int = 1
    messages: Dict[int, Message] = attrs.field(factory=dict)
    expunged: Dict[int, int] = attrs.field(factory=dict)
    # Keywords ever used here, in order of appearance (the FLAGS response).
    keywords: List[bytes] = attrs.field(factory=list)
    # The first UID not yet \Recent to some session.
    recent_floor: int = 1
    # A mailbox without persistent MODSEQs or UIDs (RFC 7162 NOMODSEQ,
    # RFC 4315 UIDNOTSTICKY), as some servers have for some mailboxes.
    nomodseq: bool = False
    uidnotsticky: bool = False

    def bump(self) -> int:
        """The MODSEQ of a new change."""
        self.highestmodseq += 1
        return self.highestmodseq

    def unseen(self) -> int:
        return sum(1 for m in self.messages.values() if _SEEN not in m.flags)

    def flag_bytes(self, flags: Iterable[bytes], recent: bool = False) -> bytes:
        """``(...)`` in Dovecot's order: system flags, ``\\Recent``, keywords."""
        present = set(flags)
        out = [f for f in SYSTEM_FLAGS if f in present]
        if recent:
            out.append(_RECENT)
        order = {k: i for i, k in enumerate(self.keywords)}
        others = [f for f in present if not f.startswith(b"\\")]
        out.extend(sorted(others, key=lambda f: (order.get(f, len(order)), f)))
        return b"(" + b" ".join(out) + b")"


@attrs.frozen
class _Event:
    """A change in the store, as sessions hear about it."""

    kind: str  # new, flags, expunge, reset, created, deleted, renamed, subscription
    name: bytes
    mailbox: Optional[Mailbox] = None
    uids: Tuple[int, ...] = ()
    origin: Optional[FakeIMAPServer] = None
    old: Optional[bytes] = None
    # For flag changes: whether \Seen was among them (UNSEEN changed).
    seen: bool = False


class Fault(enum.Enum):
    """What a command hook may do to a connection."""

    #: Abort the connection without executing the command.
    DROP_BEFORE = "drop-before"
    #: Execute the command, then abort before any of its responses is sent.
    DROP_AFTER = "drop-after"
    #: Neither execute nor answer this command or any later one; the
    #: connection stays open (a hung server: the client's timeout fires).
    HANG = "hang"


@attrs.frozen
class Reply:
    """Answer the command with this instead of executing it."""

    status: bytes = b"NO"
    text: bytes = b"Injected failure"
    code: Optional[bytes] = None


Action = Union[Fault, Reply]
#: Called with (command name such as b"UID STORE", the raw command bytes).
CommandHook = Callable[[bytes, bytes], object]


@attrs.define(eq=False)
class FaultPlan:
    """Command hooks, consulted before each command; the first action wins."""

    hooks: List[CommandHook] = attrs.field(factory=list)
    #: Greet new connections with BYE (server down).
    refuse_connections: bool = False

    def on_command(self, hook: CommandHook) -> CommandHook:
        """Call ``hook(name, raw)`` before each command (it may change the store)."""
        self.hooks.append(hook)
        return hook

    def remove(self, hook: CommandHook) -> None:
        self.hooks.remove(hook)

    def clear(self) -> None:
        del self.hooks[:]
        self.refuse_connections = False

    def drop_before(self, command: bytes, skip: int = 0) -> None:
        """Abort the connection instead of running the next ``command`` (after ``skip``)."""
        self._rule(command, Fault.DROP_BEFORE, skip, 1)

    def drop_after(self, command: bytes, skip: int = 0) -> None:
        """Run the next ``command`` (after ``skip``), then abort before answering."""
        self._rule(command, Fault.DROP_AFTER, skip, 1)

    def hang(self, command: bytes, skip: int = 0) -> None:
        """Stop answering at the next ``command`` (after ``skip``)."""
        self._rule(command, Fault.HANG, skip, 1)

    def refuse(
        self,
        command: bytes,
        text: bytes = b"Injected failure",
        code: Optional[bytes] = None,
        times: Optional[int] = None,
        status: bytes = b"NO",
    ) -> None:
        """Answer ``command`` with NO (``times`` times; None: until cleared)."""
        self._rule(command, Reply(status, text, code), 0, times)

    def decide(self, name: bytes, raw: bytes) -> Optional[Action]:
        """Run every hook; the first `Fault` or `Reply` returned wins (any
        other return value is ignored, so a hook may be a bare lambda)."""
        chosen: Optional[Action] = None
        for hook in list(self.hooks):
            action = hook(name, raw)
            if chosen is None and isinstance(action, (Fault, Reply)):
                chosen = action
        return chosen

    def _rule(self, command: bytes, action: Action, skip: int, times: Optional[int]) -> None:
        wanted = command.upper()
        state = {"skip": skip, "times": times}

        def hook(name: bytes, raw: bytes) -> object:
            if name != wanted:
                return None
            if state["skip"]:
                state["skip"] -= 1
                return None
            if state["times"] is not None:
                state["times"] -= 1
                if state["times"] <= 0:
                    self.hooks.remove(hook)
            return action

        self.hooks.append(hook)


@attrs.define(eq=False)
class MailStore:
    """One account's mail, in memory, with Dovecot's mailbox semantics.

    Names are wire bytes (modified UTF-7) with ``separator``.  ``mailboxes``
    holds the selectable mailboxes (INBOX always exists); ``placeholders``
    the \\Noselect levels that CREATE makes for missing parents, as
    Dovecot's fs layout does; ``subscriptions`` may name mailboxes that no
    longer exist (Dovecot keeps them on DELETE and RENAME).  Change the
    store through its methods: they bump MODSEQs and notify sessions.
    """

    separator: bytes = b"/"
    uidvalidity_base: int = attrs.field(factory=lambda: next(_uidvalidity_bases))
    #: Time source for messages appended without a date.
    now: Callable[[], float] = time.time
    mailboxes: Dict[bytes, Mailbox] = attrs.field(init=False, factory=dict)
    placeholders: Set[bytes] = attrs.field(init=False, factory=set)
    subscriptions: Set[bytes] = attrs.field(init=False, factory=set)
    faults: FaultPlan = attrs.field(init=False, factory=FaultPlan)
    servers: List[FakeIMAPServer] = attrs.field(init=False, factory=list)
    _uidvalidities: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if len(self.separator) != 1 or self.separator in b' "\\\r\n%*':
            raise ValueError(f"unusable hierarchy separator {self.separator!r}")
        self.mailboxes[b"INBOX"] = self._new_mailbox()

    # -- lookups ---------------------------------------------------------

    def normalize(self, name: bytes) -> bytes:
        """INBOX (and its children) in canonical case."""
        if name.upper() == b"INBOX":
            return b"INBOX"
        if name[:6].upper() == b"INBOX" + self.separator:
            return b"INBOX" + name[5:]
        return name

    def exists(self, name: bytes) -> bool:
        """Whether ``name`` is listed (a mailbox or a \\Noselect level)."""
        name = self.normalize(name)
        return name in self.mailboxes or name in self.placeholders

    def names(self) -> List[bytes]:
        """Every listed name, INBOX first, parents before children."""
        return sorted(set(self.mailboxes) | self.placeholders, key=_name_order)

    def mailbox(self, name: bytes) -> Mailbox:
        """The selectable mailbox ``name`` (MailStoreError if there is none)."""
        found = self.mailboxes.get(self.normalize(name))
        if found is None:
            raise MailStoreError(b"Mailbox doesn't exist: " + name)
        return found

    def messages(self, name: bytes) -> Dict[int, Message]:
        """UID -> Message, by UID (a copy of the mapping; the messages are live)."""
        return dict(sorted(self.mailbox(name).messages.items()))

    def status(self, name: bytes) -> Dict[str, int]:
        mailbox = self.mailbox(name)
        return {
            "MESSAGES": len(mailbox.messages),
            "UIDNEXT": mailbox.uidnext,
            "UIDVALIDITY": mailbox.uidvalidity,
            "HIGHESTMODSEQ": mailbox.highestmodseq,
            "UNSEEN": mailbox.unseen(),
        }

    def has_children(self, name: bytes) -> bool:
        prefix = name + self.separator
        return any(
            n.startswith(prefix) for n in itertools.chain(self.mailboxes, self.placeholders)
        )

    def snapshot(self, internaldate: bool = False) -> Dict[Tuple[str, ...], List[Tuple[Any, ...]]]:
        """Like tests/dovecot.py's ``MailStore.snapshot``: comparable across
        stores and separators.  Selectable mailboxes by path (the decoded
        name split on the separator) -> sorted (body sha256, sorted flags),
        plus the INTERNALDATE as UTC ISO text when asked.
        """
        separator = self.separator.decode("ascii")
        snapshot: Dict[Tuple[str, ...], List[Tuple[Any, ...]]] = {}
        for name, mailbox in self.mailboxes.items():
            entries = []
            for message in mailbox.messages.values():
                flags = tuple(sorted(f.decode("ascii") for f in message.flags))
                entry: Tuple[Any, ...] = (hashlib.sha256(message.body).hexdigest(), flags)
                if internaldate:
                    stamp = _parse_date(message.internaldate)
                    entry += (datetime.datetime.fromtimestamp(stamp, datetime.UTC).isoformat(),)
                entries.append(entry)
            snapshot[tuple(mutf7_decode(name).split(separator))] = sorted(entries)
        return snapshot

    # -- mailboxes -------------------------------------------------------

    def create(self, name: bytes) -> None:
        """CREATE: missing parents become \\Noselect levels; a trailing
        separator makes only a \\Noselect level (as Dovecot)."""
        name = self.normalize(name)
        self._check_name(name)
        level_only = name.endswith(self.separator)
        if level_only:
            name = name[:-1]
        if name in self.mailboxes or (level_only and name in self.placeholders):
            raise MailStoreError(b"Mailbox already exists", b"ALREADYEXISTS")
        created = self._make_parents(name)
        if level_only:
            self.placeholders.add(name)
        else:
            self.placeholders.discard(name)
            self.mailboxes[name] = self._new_mailbox()
        created.append(name)
        for each in created:
            self._emit(_Event("created", each, self.mailboxes.get(each)))

    def delete(self, name: bytes) -> None:
        """DELETE; a mailbox with children stays as a \\Noselect level."""
        name = self.normalize(name)
        if name == b"INBOX":
            raise MailStoreError(b"INBOX can't be deleted")
        if name in self.mailboxes:
            mailbox = self.mailboxes.pop(name)
            if self.has_children(name):
                self.placeholders.add(name)
            self._emit(_Event("deleted", name, mailbox))
        elif name in self.placeholders:
            if self.has_children(name):
                raise MailStoreError(b"Mailbox has children, delete them first")
            self.placeholders.discard(name)
            self._emit(_Event("deleted", name))
        else:
            raise MailStoreError(b"Mailbox doesn't exist: " + name, b"NONEXISTENT")

    def rename(self, old: bytes, new: bytes) -> None:
        """RENAME with children; messages and UIDVALIDITY stay (RENAME INBOX
        moves its messages away and leaves an empty INBOX, as Dovecot)."""
        old = self.normalize(old)
        new = self.normalize(new)
        if not self.exists(old):
            raise MailStoreError(b"Mailbox doesn't exist: " + old, b"NONEXISTENT")
        self._check_name(new)
        if self.exists(new):
            raise MailStoreError(b"Target mailbox already exists", b"ALREADYEXISTS")
        if new.startswith(old + self.separator):
            raise MailStoreError(b"Can't rename mailbox under its own child")
        events: List[_Event] = []
        gone: List[_Event] = []
        created = self._make_parents(new)
        if old == b"INBOX":
            moved = self.mailboxes[old]
            self.mailboxes[new] = moved
            self.mailboxes[old] = self._new_mailbox()
            events.append(_Event("renamed", new, moved, old=old))
        else:
            prefix = old + self.separator
            names = [n for n in self.names() if n == old or n.startswith(prefix)]
            for name in names:
                target = new + name[len(old) :]
                if name in self.placeholders:
                    self.placeholders.discard(name)
                    self.placeholders.add(target)
                    gone.append(_Event("deleted", name))
                    created.append(target)
                else:
                    mailbox = self.mailboxes.pop(name)
                    self.mailboxes[target] = mailbox
                    events.append(_Event("renamed", target, mailbox, old=name))
        events.extend(_Event("created", n) for n in created)
        for event in gone + events:
            self._emit(event)

    def subscribe(self, name: bytes) -> None:
        name = self.normalize(name)
        if not self.exists(name):
            raise MailStoreError(b"Mailbox doesn't exist: " + name)
        if name not in self.subscriptions:
            self.subscriptions.add(name)
            self._emit(_Event("subscription", name))

    def unsubscribe(self, name: bytes) -> None:
        name = self.normalize(name)
        if name in self.subscriptions:
            self.subscriptions.discard(name)
            self._emit(_Event("subscription", name))

    # -- messages --------------------------------------------------------

    def append(
        self,
        name: bytes,
        body: bytes,
        flags: Iterable[bytes] = (),
        internaldate: Optional[bytes] = None,
    ) -> int:
        """Add a message (date like b"01-Jan-2020 10:00:00 +0100"); return its UID."""
        return self.append_many(name, [(body, flags, internaldate)])[0]

    def append_many(
        self, name: bytes, messages: Iterable[Tuple[bytes, Iterable[bytes], Optional[bytes]]]
    ) -> List[int]:
        """Add (body, flags, internaldate) messages in one transaction (one MODSEQ)."""
        items = [(body, list(flags), date) for body, flags, date in messages]
        try:
            for _, flags, _ in items:
                _check_flags(flags)
        except _Bad as e:
            raise ValueError(e.text.decode("ascii", "replace"))
        return self._append(name, items, None)[1]

    def set_flags(
        self,
        name: bytes,
        uids: Union[int, Iterable[int]],
        flags: Iterable[bytes],
        mode: str = "replace",
    ) -> None:
        """Replace (or with mode "add"/"remove", change) the flags of messages."""
        wanted = [uids] if isinstance(uids, int) else list(uids)
        mailbox = self.mailbox(name)
        missing = [u for u in wanted if u not in mailbox.messages]
        if missing:
            raise ValueError(f"no messages with UIDs {missing}")
        flags = list(flags)
        try:
            _check_flags(flags)
        except _Bad as e:
            raise ValueError(e.text.decode("ascii", "replace"))
        signs = {"replace": b"", "add": b"+", "remove": b"-"}
        self._store(self.normalize(name), wanted, signs[mode], flags, None, None)

    def expunge(self, name: bytes, uids: Union[int, Iterable[int]]) -> None:
        """Expunge messages (whatever their flags), as another client would."""
        wanted = [uids] if isinstance(uids, int) else list(uids)
        mailbox = self.mailbox(name)
        missing = [u for u in wanted if u not in mailbox.messages]
        if missing:
            raise ValueError(f"no messages with UIDs {missing}")
        self._expunge(self.normalize(name), wanted, None)

    def reset_uidvalidity(self, name: bytes) -> int:
        """Simulate a UIDVALIDITY change (a rebuilt index): the messages are
        renumbered from 1 and the expunge history is lost.  Sessions with
        the mailbox selected are disconnected at their next command."""
        name = self.normalize(name)
        mailbox = self.mailbox(name)
        self._uidvalidities += 1
        mailbox.uidvalidity = self.uidvalidity_base + self._uidvalidities
        modseq = mailbox.bump()
        messages = list(mailbox.messages.values())
        mailbox.messages = {}
        for uid, message in enumerate(messages, 1):
            message.modseq = modseq
            mailbox.messages[uid] = message
        mailbox.uidnext = len(messages) + 1
        mailbox.recent_floor = mailbox.uidnext
        mailbox.expunged = {}
        self._emit(_Event("reset", name, mailbox))
        return mailbox.uidvalidity

    def disconnect_all(self) -> None:
        """Drop every connection (a server restart)."""
        for server in list(self.servers):
            server.drop()

    def on_command(self, hook: CommandHook) -> CommandHook:
        """``self.faults.on_command``: a hook for every connection to this store."""
        return self.faults.on_command(hook)

    # -- what the server calls -------------------------------------------

    def _append(
        self,
        name: bytes,
        items: Sequence[Tuple[bytes, Iterable[bytes], Optional[bytes]]],
        origin: Optional[FakeIMAPServer],
    ) -> Tuple[int, List[int]]:
        name = self.normalize(name)
        mailbox = self.mailboxes.get(name)
        if mailbox is None:
            raise MailStoreError(b"Mailbox doesn't exist: " + name, b"TRYCREATE")
        dates = []
        for body, _, date in items:
            if not body:
                raise MailStoreError(b"Can't save a zero byte message")
            dates.append(_format_date(self.now() if date is None else _parse_date(date)))
        modseq = mailbox.bump()
        uids = []
        for (body, flags, _), date in zip(items, dates, strict=True):
            uid = mailbox.uidnext
            mailbox.uidnext += 1
            flag_set = _canonical_flags(flags, mailbox.keywords)
            mailbox.messages[uid] = Message(body, flag_set, date, modseq)
            uids.append(uid)
        self._emit(_Event("new", name, mailbox, tuple(uids), origin))
        return mailbox.uidvalidity, uids

    def _store(
        self,
        name: bytes,
        uids: Iterable[int],
        sign: bytes,
        flags: Iterable[bytes],
        unchangedsince: Optional[int],
        origin: Optional[FakeIMAPServer],
    ) -> Tuple[List[int], List[int]]:
        """Change flags in one transaction; return (changed UIDs, UIDs left
        alone because their MODSEQ is above ``unchangedsince``)."""
        mailbox = self.mailboxes[name]
        wanted = _canonical_flags(flags, mailbox.keywords)
        modified: List[int] = []
        changes: Dict[int, Set[bytes]] = {}
        for uid in uids:
            message = mailbox.messages.get(uid)
            if message is None:
                continue
            if unchangedsince is not None and message.modseq > unchangedsince:
                modified.append(uid)
                continue
            if sign == b"+":
                new = message.flags | wanted
            elif sign == b"-":
                new = message.flags - wanted
            else:
                new = set(wanted)
            if new != message.flags:
                changes[uid] = new
        if changes:
            # Dovecot logs system flags and keywords as separate changes:
            # a STORE touching both uses two MODSEQs.
            touched = set()
            for uid, new in changes.items():
                touched.update(new.symmetric_difference(mailbox.messages[uid].flags))
            mailbox.highestmodseq += len({f.startswith(b"\\") for f in touched}) - 1
            modseq = mailbox.bump()
            for uid, new in changes.items():
                mailbox.messages[uid].flags = new
                mailbox.messages[uid].modseq = modseq
            self._emit(
                _Event("flags", name, mailbox, tuple(changes), origin, seen=_SEEN in touched)
            )
        return list(changes), modified

    def _expunge(
        self, name: bytes, uids: Iterable[int], origin: Optional[FakeIMAPServer]
    ) -> List[int]:
        mailbox = self.mailboxes[name]
        gone = sorted(u for u in set(uids) if u in mailbox.messages)
        if gone:
            modseq = mailbox.bump()
            for uid in gone:
                del mailbox.messages[uid]
                mailbox.expunged[uid] = modseq
            self._emit(_Event("expunge", name, mailbox, tuple(gone), origin))
        return gone

    def _new_mailbox(self) -> Mailbox:
        self._uidvalidities += 1
        return Mailbox(uidvalidity=self.uidvalidity_base + self._uidvalidities)

    def _check_name(self, name: bytes) -> None:
        separator = self.separator
        if not name:
            raise MailStoreError(b"Invalid mailbox name: Name is empty", b"CANNOT")
        if name.startswith(separator):
            raise MailStoreError(
                b"Invalid mailbox name: Begins with hierarchy separator", b"CANNOT"
            )
        if separator + separator in name:
            raise MailStoreError(
                b"Invalid mailbox name: Has adjacent hierarchy separators", b"CANNOT"
            )
        try:
            mutf7_decode(name)
        except ValueError:
            raise MailStoreError(b"Mailbox name is not valid mUTF-7")

    def _make_parents(self, name: bytes) -> List[bytes]:
        made = []
        parts = name.split(self.separator)
        for i in range(1, len(parts)):
            parent = self.separator.join(parts[:i])
            if parent not in self.mailboxes and parent not in self.placeholders:
                self.placeholders.add(parent)
                made.append(parent)
        return made

    def _emit(self, event: _Event) -> None:
        for server in list(self.servers):
            server.store_changed(event)


def _name_order(name: bytes) -> Tuple[bool, bytes]:
    # INBOX first (Dovecot lists in its index's order, INBOX often last).
    return (name != b"INBOX", name)


# --- the server -------------------------------------------------------------------


@attrs.define(eq=False)
class _View:
    """A session's view of its selected mailbox: what it has been told."""

    name: bytes
    mailbox: Mailbox
    readonly: bool
    uids: List[int]
    uidnext: int
    modseq: int
    keywords: int
    recent: Set[int] = attrs.field(factory=set)
    flag_changes: Set[int] = attrs.field(factory=set)
    expunged: Set[int] = attrs.field(factory=set)

    def seq(self, uid: int) -> int:
        return bisect.bisect_left(self.uids, uid) + 1


_EVENT_NAMES = {
    "new": b"MESSAGENEW",
    "reset": b"MESSAGENEW",
    "expunge": b"MESSAGEEXPUNGE",
    "flags": b"FLAGCHANGE",
    "created": b"MAILBOXNAME",
    "deleted": b"MAILBOXNAME",
    "renamed": b"MAILBOXNAME",
    "subscription": b"SUBSCRIPTIONCHANGE",
}


@attrs.define
class _NotifySpec:
    """What NOTIFY SET asked for (RFC 5465), minimally."""

    status: bool = False
    selected_events: FrozenSet[bytes] = frozenset()
    # MessageNew's fetch attributes for the selected mailbox.
    selected_fetch: Tuple[bytes, ...] = ()
    filters: List[Tuple[bytes, Tuple[bytes, ...], FrozenSet[bytes]]] = attrs.field(factory=list)

    def events_for(self, name: bytes, store: MailStore) -> FrozenSet[bytes]:
        for kind, names, events in self.filters:
            if kind == b"PERSONAL":
                return events
            if kind == b"INBOXES" and name == b"INBOX":
                return events
            if kind == b"SUBSCRIBED" and name in store.subscriptions:
                return events
            if kind == b"MAILBOXES" and name in names:
                return events
            if kind == b"SUBTREE" and any(
                name == n or name.startswith(n + store.separator) for n in names
            ):
                return events
        return frozenset()


# Command name -> (method, state, capability it needs).
_ANY, _NOT_AUTHENTICATED, _AUTHENTICATED, _SELECTED = range(4)
_COMMANDS: Dict[bytes, Tuple[str, int, Optional[bytes]]] = {
    b"CAPABILITY": ("_cmd_capability", _ANY, None),
    b"NOOP": ("_cmd_noop", _ANY, None),
    b"LOGOUT": ("_cmd_logout", _ANY, None),
    b"ID": ("_cmd_id", _ANY, b"ID"),
    b"LOGIN": ("_cmd_login", _NOT_AUTHENTICATED, None),
    b"AUTHENTICATE": ("_cmd_authenticate", _NOT_AUTHENTICATED, None),
    b"ENABLE": ("_cmd_enable", _AUTHENTICATED, b"ENABLE"),
    b"SELECT": ("_cmd_select", _AUTHENTICATED, None),
    b"EXAMINE": ("_cmd_examine", _AUTHENTICATED, None),
    b"CREATE": ("_cmd_create", _AUTHENTICATED, None),
    b"DELETE": ("_cmd_delete", _AUTHENTICATED, None),
    b"RENAME": ("_cmd_rename", _AUTHENTICATED, None),
    b"SUBSCRIBE": ("_cmd_subscribe", _AUTHENTICATED, None),
    b"UNSUBSCRIBE": ("_cmd_unsubscribe", _AUTHENTICATED, None),
    b"LIST": ("_cmd_list", _AUTHENTICATED, None),
    b"STATUS": ("_cmd_status", _AUTHENTICATED, None),
    b"APPEND": ("_cmd_append", _AUTHENTICATED, None),
    b"NOTIFY": ("_cmd_notify", _AUTHENTICATED, b"NOTIFY"),
    b"CLOSE": ("_cmd_close", _SELECTED, None),
    b"UNSELECT": ("_cmd_unselect", _SELECTED, b"UNSELECT"),
    b"EXPUNGE": ("_cmd_expunge", _SELECTED, None),
    b"FETCH": ("_cmd_fetch", _SELECTED, None),
    b"STORE": ("_cmd_store", _SELECTED, None),
    b"SEARCH": ("_cmd_search", _SELECTED, None),
    b"UID FETCH": ("_cmd_uid_fetch", _SELECTED, None),
    b"UID STORE": ("_cmd_uid_store", _SELECTED, None),
    b"UID SEARCH": ("_cmd_uid_search", _SELECTED, None),
    b"UID EXPUNGE": ("_cmd_uid_expunge", _SELECTED, b"UIDPLUS"),
}

_FETCH_ITEMS = {
    b"UID",
    b"FLAGS",
    b"MODSEQ",
    b"INTERNALDATE",
    b"RFC822.SIZE",
    b"BODY[]",
    b"BODY.PEEK[]",
    b"RFC822",
}

Outcome = Optional[Tuple[Optional[bytes], bytes]]


class FakeIMAPServer(Protocol):
    """One IMAP connection to a `MailStore`.

    PREAUTH by default; with ``preauth=False`` the client logs in with
    LOGIN or AUTHENTICATE PLAIN as one of ``users`` (name -> password).
    ``capabilities`` are the post-login ones; an extension left out is
    refused as Dovecot refuses a command it does not know.
    ``faults`` holds hooks for this connection only (``store.faults``:
    for all of them).  ``commands`` lists the names of the commands
    received, for assertions on traffic.

    ``notify_quirk``: like Dovecot 2.3.19, send no NOTIFY event after a
    NOTIFY SET that replaces another one (until NOTIFY NONE).
    """

    def __init__(
        self,
        store: MailStore,
        capabilities: Optional[Sequence[bytes]] = None,
        *,
        preauth: bool = True,
        users: Optional[Mapping[str, str]] = None,
        prelogin_capabilities: Optional[Sequence[bytes]] = None,
        server_id: Optional[Mapping[bytes, bytes]] = None,
        user: bytes = b"user",
        notify_quirk: bool = True,
    ) -> None:
        self.store = store
        self.capabilities = tuple(
            capabilities if capabilities is not None else DEFAULT_CAPABILITIES
        )
        self.prelogin_capabilities = tuple(
            prelogin_capabilities if prelogin_capabilities is not None else PRELOGIN_CAPABILITIES
        )
        self.preauth = preauth
        self.users = dict(users or {})
        self.server_id = dict(server_id if server_id is not None else {b"name": b"Dovecot"})
        self.user = user
        self.notify_quirk = notify_quirk
        self.faults = FaultPlan()
        self.commands: List[bytes] = []
        self.authenticated = preauth
        self.condstore = False
        self.qresync = False
        self.selected: Optional[_View] = None
        self.notify: Optional[_NotifySpec] = None
        self._notify_silenced = False
        self._buffer = bytearray()
        self._scan = 0
        self._continued = -1
        self._sasl_tag: Optional[bytes] = None
        self._out: List[bytes] = []
        self._closed = False
        self._inconsistent = False
        self._logging_out = False
        self._bye: Optional[bytes] = None
        self._hung = False

    # -- connection ------------------------------------------------------

    def _has(self, capability: bytes) -> bool:
        offered = self.capabilities if self.authenticated else self.prelogin_capabilities
        return capability.upper() in {c.upper() for c in offered}

    def connectionMade(self) -> None:
        self.store.servers.append(self)
        if self.store.faults.refuse_connections:
            self._write(b"* BYE Server shutting down.\r\n")
            self._close()
            return
        if self.preauth:
            greeting = b"* PREAUTH [CAPABILITY %s] Logged in as %s\r\n" % (
                b" ".join(self.capabilities),
                self.user,
            )
        else:
            greeting = b"* OK [CAPABILITY %s] Dovecot ready.\r\n" % b" ".join(
                self.prelogin_capabilities
            )
        self._write(greeting)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gone()

    def drop(self) -> None:
        """Abort the connection now (a cut network, a killed server process)."""
        self._gone()
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _close(self) -> None:
        self._gone()
        if self.transport is not None:
            self.transport.loseConnection()

    def _gone(self) -> None:
        # Closed: hears of nothing more, even before the client notices.
        self._closed = True
        if self in self.store.servers:
            self.store.servers.remove(self)

    def _write(self, data: bytes) -> None:
        if not self._closed and self.transport is not None:
            self.transport.write(data)

    def _untagged(self, line: bytes) -> None:
        self._out.append(b"* " + line + b"\r\n")

    # -- framing ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while not self._closed and not self._hung:
            if self._sasl_tag is not None:
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                self._finish_sasl(line)
                continue
            command_end = self._command_end()
            if command_end is None:
                return
            raw = bytes(self._buffer[:command_end])
            del self._buffer[:command_end]
            self._scan = 0
            self._continued = -1
            self._run(raw)

    def _command_end(self) -> Optional[int]:
        """Where the complete command at the start of the buffer ends, if it is complete."""
        pos = self._scan
        while True:
            crlf = self._buffer.find(b"\r\n", pos)
            if crlf < 0:
                self._scan = pos
                return None
            literal = _LITERAL_AT_END.search(self._buffer, pos, crlf)
            if literal is None:
                return crlf + 2
            if not literal.group(2) and crlf > self._continued:
                # A synchronizing literal: invite the data.
                self._continued = crlf
                self._write(b"+ OK\r\n")
            after = crlf + 2 + int(literal.group(1))
            if len(self._buffer) < after:
                self._scan = pos
                return None
            pos = after

    # -- commands --------------------------------------------------------

    def _run(self, raw: bytes) -> None:
        tag_match = _TAG.match(raw)
        if tag_match is None or raw[tag_match.end() : tag_match.end() + 1] != b" ":
            self._write(b"* BAD Error in IMAP command received by server.\r\n")
            return
        tag = tag_match.group()
        name_match = _COMMAND_NAME.match(raw, tag_match.end() + 1)
        if name_match is None:
            self._write(tag + b" BAD Error in IMAP command received by server.\r\n")
            return
        name = name_match.group().upper()
        pos = name_match.end()
        if name == b"UID":
            sub = _COMMAND_NAME.match(raw, pos + 1) if raw[pos : pos + 1] == b" " else None
            if sub is None:
                self._write(tag + b" BAD Error in IMAP command UID: Invalid arguments\r\n")
                return
            name = b"UID " + sub.group().upper()
            pos = sub.end()
        self.commands.append(name)
        if self._inconsistent:
            self._write(b"* BYE IMAP session state is inconsistent, please relogin.\r\n")
            self._close()
            return
        # Both plans see every command; this connection's decides first.
        mine = self.faults.decide(name, raw)
        shared = self.store.faults.decide(name, raw)
        action = mine if mine is not None else shared
        if self._closed:
            return
        if action is Fault.DROP_BEFORE:
            self.drop()
            return
        if action is Fault.HANG:
            self._hung = True
            return
        if isinstance(action, Reply):
            given = b" [" + action.code + b"]" if action.code else b""
            self._write(tag + b" " + action.status + given + b" " + action.text + b"\r\n")
            return
        self._out = []
        # Dovecot's imap process (not its login process) times each reply.
        timed = self.authenticated
        status = b"OK"
        code: Optional[bytes] = None
        text = b""
        try:
            outcome = self._execute(tag, name, raw, pos)
            if outcome is None:
                # AUTHENTICATE awaits the client's response.
                self._flush_out()
                return
            code, text = outcome
        except _Bad as e:
            status = b"BAD"
            text = e.text if e.bare else b"Error in IMAP command " + name + b": " + e.text
        except _No as e:
            status, code, text = b"NO", e.code, e.text
        except MailStoreError as e:
            status, code, text = b"NO", e.code, e.text
        if self.authenticated:
            code = self._sync_selected(code)
        if action is Fault.DROP_AFTER:
            self._out = []
            self.drop()
            return
        if timed:
            text += b" (0.001 + 0.000 secs)."
        self._out.append(
            tag + b" " + status + (b" [" + code + b"]" if code else b"") + b" " + text + b"\r\n"
        )
        self._flush_out()
        if self._bye is not None:
            self._write(b"* BYE " + self._bye + b"\r\n")
            self._close()
        elif self._logging_out:
            self._close()

    def _flush_out(self) -> None:
        out, self._out = self._out, []
        if out:
            self._write(b"".join(out))

    def _execute(self, tag: bytes, name: bytes, raw: bytes, pos: int) -> Outcome:
        entry = _COMMANDS.get(name)
        if entry is None or (entry[2] is not None and not self._has(entry[2])):
            raise _Bad(b"Unknown command")
        method, state, _ = entry
        if not self.authenticated and state >= _AUTHENTICATED:
            raise _Bad(b"Error in IMAP command received by server.", bare=True)
        if self.authenticated and state == _NOT_AUTHENTICATED:
            raise _Bad(b"Unknown command")
        if state == _SELECTED and self.selected is None:
            raise _Bad(b"No mailbox selected", bare=True)
        args = _tokenize(raw, pos)
        handler: Callable[[bytes, List[Token]], Outcome] = getattr(self, method)
        return handler(tag, args)

    # -- any state -------------------------------------------------------

    def _cmd_capability(self, tag: bytes, args: List[Token]) -> Outcome:
        if self.authenticated:
            self._untagged(b"CAPABILITY " + b" ".join(self.capabilities))
            return None, b"Capability completed"
        self._untagged(b"CAPABILITY " + b" ".join(self.prelogin_capabilities))
        return None, b"Pre-login capabilities listed, post-login capabilities have more."

    def _cmd_noop(self, tag: bytes, args: List[Token]) -> Outcome:
        return None, b"NOOP completed"

    def _cmd_logout(self, tag: bytes, args: List[Token]) -> Outcome:
        self._untagged(b"BYE Logging out")
        self._logging_out = True
        self.selected = None
        return None, b"Logout completed"

    def _cmd_id(self, tag: bytes, args: List[Token]) -> Outcome:
        fields = []
        for key, value in self.server_id.items():
            fields += [b'"' + key + b'"', b'"' + value + b'"']
        self._untagged(b"ID (" + b" ".join(fields) + b")")
        return None, b"ID completed"

    # -- authentication --------------------------------------------------

    def _cmd_login(self, tag: bytes, args: List[Token]) -> Outcome:
        if len(args) != 2:
            raise _Bad(b"Invalid arguments")
        self._check_password(_astring(args[0]), _astring(args[1]))
        return b"CAPABILITY " + b" ".join(self.capabilities), b"Logged in"

    def _cmd_authenticate(self, tag: bytes, args: List[Token]) -> Outcome:
        if not args:
            raise _Bad(b"Invalid arguments")
        mechanism = _word(args[0])
        if mechanism != b"PLAIN" or not self._has(b"AUTH=PLAIN"):
            raise _No(b"Unsupported authentication mechanism.", b"ALERT")
        if len(args) > 1:
            if not self._has(b"SASL-IR"):
                raise _Bad(b"Invalid arguments")
            return self._sasl_plain(_astring(args[1]))
        self._sasl_tag = tag
        self._out.append(b"+ \r\n")
        return None

    def _finish_sasl(self, line: bytes) -> None:
        tag = self._sasl_tag
        assert tag is not None
        self._sasl_tag = None
        self._out = []
        if line == b"*":
            self._write(tag + b" BAD Authentication aborted by client.\r\n")
            return
        try:
            outcome = self._sasl_plain(line)
        except _No as e:
            code = b" [" + e.code + b"]" if e.code else b""
            self._write(tag + b" NO" + code + b" " + e.text + b"\r\n")
            return
        assert outcome is not None
        self._out.append(tag + b" OK " + outcome[1] + b"\r\n")
        self._flush_out()

    def _sasl_plain(self, response: bytes) -> Outcome:
        try:
            data = b"" if response == b"=" else base64.b64decode(response, validate=True)
        except (binascii.Error, ValueError):
            raise _No(b"Invalid base64 in response", b"ALERT")
        parts = data.split(b"\0")
        if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
            raise _No(b"Authentication failed.", b"AUTHENTICATIONFAILED")
        self._check_password(parts[1], parts[2])
        self._untagged(b"CAPABILITY " + b" ".join(self.capabilities))
        return None, b"Logged in"

    def _check_password(self, user: bytes, password: bytes) -> None:
        name = user.decode("utf-8", "replace")
        if name not in self.users or self.users[name].encode("utf-8") != password:
            raise _No(b"Authentication failed.", b"AUTHENTICATIONFAILED")
        self.authenticated = True
        self.user = user

    # -- authenticated state ----------------------------------------------

    def _cmd_enable(self, tag: bytes, args: List[Token]) -> Outcome:
        enabled = []
        for arg in args:
            word = _word(arg)
            if word in (b"CONDSTORE", b"QRESYNC") and self._has(word):
                enabled.append(word)
                self.condstore = True
                if word == b"QRESYNC":
                    self.qresync = True
        if enabled:
            self._untagged(b"ENABLED " + b" ".join(enabled))
        return None, b"Enabled"

    def _cmd_create(self, tag: bytes, args: List[Token]) -> Outcome:
        if len(args) != 1:
            raise _Bad(b"Invalid arguments")
        self.store.create(_astring(args[0]))
        return None, b"Create completed"

    def _cmd_delete(self, tag: bytes, args: List[Token]) -> Outcome:
        if len(args) != 1:
            raise _Bad(b"Invalid arguments")
        self.store.delete(_astring(args[0]))
        if self._inconsistent:
            self._bye = b"Selected mailbox was deleted, have to disconnect."
        return None, b"Delete completed"

    def _cmd_rename(self, tag: bytes, args: List[Token]) -> Outcome:
        if len(args) != 2:
            raise _Bad(b"Invalid arguments")
        self.store.rename(_astring(args[0]), _astring(args[1]))
        return None, b"Rename completed"

    def _cmd_subscribe(self, tag: bytes, args: List[Token]) -> Outcome:
        if len(args) != 1:
            raise _Bad(b"Invalid arguments")
        self.store.subscribe(_astring(args[0]))
        return None, b"Subscribe completed"

    def _cmd_unsubscribe(self, tag: bytes, args: List[Token]) -> Outcome:
        if len(args) != 1:
            raise _Bad(b"Invalid arguments")
        self.store.unsubscribe(_astring(args[0]))
        return None, b"Unsubscribe completed"

    def _status_items(self, token: Token) -> List[bytes]:
        if not isinstance(token, list) or not token:
            raise _Bad(b"Invalid arguments")
        items = [_word(t) for t in token]
        for item in items:
            if item not in _STATUS_ORDER:
                raise _Bad(b"Invalid status item " + item)
            if item == b"HIGHESTMODSEQ":
                if not self._has(b"CONDSTORE"):
                    raise _Bad(b"Invalid status item " + item)
                self.condstore = True
        return items

    def _status_line(self, name: bytes, mailbox: Mailbox, items: Iterable[bytes]) -> bytes:
        values = {
            b"MESSAGES": len(mailbox.messages),
            b"RECENT": sum(1 for u in mailbox.messages if u >= mailbox.recent_floor),
            b"UIDNEXT": mailbox.uidnext,
            b"UIDVALIDITY": mailbox.uidvalidity,
            b"UNSEEN": mailbox.unseen(),
            b"HIGHESTMODSEQ": mailbox.highestmodseq,
        }
        wanted = set(items)
        pairs = [b"%s %d" % (item, values[item]) for item in _STATUS_ORDER if item in wanted]
        return b"STATUS " + _format_astring(name) + b" (" + b" ".join(pairs) + b")"

    def _cmd_status(self, tag: bytes, args: List[Token]) -> Outcome:
        if len(args) != 2:
            raise _Bad(b"Invalid arguments")
        name = self.store.normalize(_astring(args[0]))
        items = self._status_items(args[1])
        mailbox = self.store.mailbox(name)
        self._untagged(self._status_line(name, mailbox, items))
        if self.selected is not None and self.selected.mailbox is mailbox:
            return b"CLIENTBUG", b"Status on selected mailbox completed"
        return None, b"Status completed"

    def _cmd_list(self, tag: bytes, args: List[Token]) -> Outcome:
        store = self.store
        i = 0
        selection: List[bytes] = []
        if args and isinstance(args[0], list):
            selection = [_word(t) for t in args[0]]
            i = 1
        if len(args) < i + 2:
            raise _Bad(b"Invalid arguments")
        reference = _astring(args[i])
        pattern_token = args[i + 1]
        patterns = (
            [_astring(p) for p in pattern_token]
            if isinstance(pattern_token, list)
            else [_astring(pattern_token)]
        )
        returns: Optional[List[bytes]] = None
        status_items: Optional[List[bytes]] = None
        rest = args[i + 2 :]
        if rest:
            if len(rest) != 2 or _word(rest[0]) != b"RETURN" or not isinstance(rest[1], list):
                raise _Bad(b"Invalid arguments")
            returns = []
            options = rest[1]
            j = 0
            while j < len(options):
                option = _word(options[j])
                returns.append(option)
                if option == b"STATUS":
                    if j + 1 >= len(options) or not self._has(b"LIST-STATUS"):
                        raise _Bad(b"Invalid arguments")
                    status_items = self._status_items(options[j + 1])
                    j += 1
                j += 1
        if (selection or returns is not None) and not self._has(b"LIST-EXTENDED"):
            raise _Bad(b"Invalid arguments")
        separator = b'"' + store.separator + b'"'
        if patterns == [b""] and not selection:
            self._untagged(b"LIST (\\Noselect) " + separator + b' ""')
            return None, b"List completed"
        matchers = [self._pattern(reference + p) for p in patterns if reference + p]
        by_subscription = b"SUBSCRIBED" in selection
        show_subscribed = by_subscription or (returns is not None and b"SUBSCRIBED" in returns)
        show_children = (not selection and returns is None) or (
            returns is not None and b"CHILDREN" in returns
        )
        candidates = (
            sorted(store.subscriptions, key=_name_order) if by_subscription else store.names()
        )
        parents = self._parents()
        for name in candidates:
            if not any(m.fullmatch(name) for m in matchers):
                continue
            attributes = []
            if show_subscribed and name in store.subscriptions:
                attributes.append(b"\\Subscribed")
            attributes += self._name_attributes(name, parents, show_children)
            self._untagged(
                b"LIST ("
                + b" ".join(attributes)
                + b") "
                + separator
                + b" "
                + _format_astring(name)
            )
            mailbox = store.mailboxes.get(name)
            if status_items and mailbox is not None:
                self._untagged(self._status_line(name, mailbox, status_items))
        return None, b"List completed"

    def _pattern(self, pattern: bytes) -> re.Pattern[bytes]:
        separator = self.store.separator
        if pattern[:5].upper() == b"INBOX" and pattern[5:6] in (b"", separator, b"*", b"%"):
            pattern = b"INBOX" + pattern[5:]
        regex = b"".join(
            b".*"
            if c == b"*"
            else b"[^" + re.escape(separator) + b"]*"
            if c == b"%"
            else re.escape(c)
            for c in (pattern[i : i + 1] for i in range(len(pattern)))
        )
        return re.compile(regex, re.DOTALL)

    def _parents(self) -> Set[bytes]:
        separator = self.store.separator
        parents: Set[bytes] = set()
        for name in self.store.names():
            parts = name.split(separator)
            for i in range(1, len(parts)):
                parents.add(separator.join(parts[:i]))
        return parents

    def _name_attributes(self, name: bytes, parents: Set[bytes], children: bool) -> List[bytes]:
        if name in self.store.mailboxes:
            attributes = []
        elif name in self.store.placeholders:
            attributes = [b"\\Noselect"]
        else:
            return [b"\\NonExistent"]
        if children:
            attributes.append(b"\\HasChildren" if name in parents else b"\\HasNoChildren")
        return attributes

    def _cmd_append(self, tag: bytes, args: List[Token]) -> Outcome:
        if len(args) < 2:
            raise _Bad(b"Invalid arguments")
        name = _astring(args[0])
        items: List[Tuple[bytes, List[bytes], Optional[bytes]]] = []
        i = 1
        while i < len(args):
            flags: List[bytes] = []
            date: Optional[bytes] = None
            token = args[i]
            if isinstance(token, list):
                if not all(isinstance(f, _Atom) for f in token):
                    raise _Bad(b"Invalid arguments")
                flags = [bytes(f) for f in token]
                i += 1
            if i < len(args) and isinstance(args[i], _String):
                if not isinstance(args[i], _LiteralString):
                    date = bytes(_astring(args[i]))
                    try:
                        _parse_date(date)
                    except ValueError:
                        raise _Bad(b"Invalid internal date")
                    i += 1
            if i >= len(args) or not isinstance(args[i], _LiteralString):
                raise _Bad(b"Invalid arguments")
            _check_flags(flags)
            items.append((bytes(_astring(args[i])), flags, date))
            i += 1
        if len(items) > 1 and not self._has(b"MULTIAPPEND"):
            raise _Bad(b"Invalid arguments")
        uidvalidity, uids = self.store._append(name, items, self)
        code = (
            b"APPENDUID %d %s" % (uidvalidity, _format_set(uids))
            if self._has(b"UIDPLUS")
            else None
        )
        return code, b"Append completed"

    # -- SELECT and the selected state -------------------------------------

    def _cmd_examine(self, tag: bytes, args: List[Token]) -> Outcome:
        return self._open(args, readonly=True)

    def _cmd_select(self, tag: bytes, args: List[Token]) -> Outcome:
        return self._open(args, readonly=False)

    def _open(self, args: List[Token], readonly: bool) -> Outcome:
        if not args or len(args) > 2:
            raise _Bad(b"Invalid arguments")
        name = self.store.normalize(_astring(args[0]))
        condstore = False
        qresync: Optional[Tuple[int, int, Optional[Token]]] = None
        if len(args) == 2:
            params = args[1]
            if not isinstance(params, list):
                raise _Bad(b"Invalid arguments")
            j = 0
            while j < len(params):
                param = _word(params[j])
                if param == b"CONDSTORE" and self._has(b"CONDSTORE"):
                    condstore = True
                    j += 1
                elif param == b"QRESYNC" and j + 1 < len(params):
                    value = params[j + 1]
                    if not isinstance(value, list) or len(value) < 2:
                        raise _Bad(b"Invalid QRESYNC parameters")
                    known = value[2] if len(value) > 2 else None
                    qresync = (_number(value[0]), _number(value[1]), known)
                    j += 2
                else:
                    raise _Bad(b"Invalid parameters")
        if self.selected is not None:
            self.selected = None
            self._untagged(b"OK [CLOSED] Previous mailbox closed.")
        if qresync is not None and not self.qresync:
            raise _Bad(b"QRESYNC not enabled")
        mailbox = self.store.mailboxes.get(name)
        if mailbox is None:
            raise _No(b"Mailbox doesn't exist: " + name)
        if condstore:
            self.condstore = True
        uids = sorted(mailbox.messages)
        view = _View(
            name=name,
            mailbox=mailbox,
            readonly=readonly,
            uids=uids,
            uidnext=mailbox.uidnext,
            modseq=mailbox.highestmodseq,
            keywords=len(mailbox.keywords),
            recent={u for u in uids if u >= mailbox.recent_floor},
        )
        if not readonly:
            mailbox.recent_floor = mailbox.uidnext
        keywords = b" ".join(mailbox.keywords)
        flags = b" ".join(SYSTEM_FLAGS) + (b" " + keywords if keywords else b"")
        self._untagged(b"FLAGS (" + flags + b")")
        if readonly:
            self._untagged(b"OK [PERMANENTFLAGS ()] Read-only mailbox.")
        else:
            self._untagged(b"OK [PERMANENTFLAGS (" + flags + b" \\*)] Flags permitted.")
        self._untagged(b"%d EXISTS" % len(uids))
        self._untagged(b"%d RECENT" % len(view.recent))
        for seq, uid in enumerate(uids, 1):
            if _SEEN not in mailbox.messages[uid].flags:
                self._untagged(b"OK [UNSEEN %d] First unseen." % seq)
                break
        self._untagged(b"OK [UIDVALIDITY %d] UIDs valid" % mailbox.uidvalidity)
        if mailbox.uidnotsticky:
            self._untagged(b"NO [UIDNOTSTICKY] Non-persistent UIDs")
        self._untagged(b"OK [UIDNEXT %d] Predicted next UID" % mailbox.uidnext)
        if self.condstore and mailbox.nomodseq:
            self._untagged(b"OK [NOMODSEQ] No permanent modsequences")
        elif self.condstore:
            self._untagged(b"OK [HIGHESTMODSEQ %d] Highest" % mailbox.highestmodseq)
        if qresync is not None and qresync[0] == mailbox.uidvalidity:
            _, modseq, known_token = qresync
            known = (
                None
                if known_token is None
                else _parse_set(known_token, max(mailbox.uidnext - 1, 1))
            )
            vanished = [
                uid
                for uid, when in mailbox.expunged.items()
                if when > modseq and (known is None or uid in known)
            ]
            if vanished:
                self._untagged(b"VANISHED (EARLIER) " + _format_set(vanished))
            for seq, uid in enumerate(uids, 1):
                message = mailbox.messages[uid]
                if message.modseq > modseq and (known is None or uid in known):
                    self._untagged(
                        b"%d FETCH (UID %d FLAGS %s MODSEQ (%d))"
                        % (
                            seq,
                            uid,
                            mailbox.flag_bytes(message.flags, uid in view.recent),
                            message.modseq,
                        )
                    )
        self.selected = view
        if readonly:
            return b"READ-ONLY", b"Examine completed"
        return b"READ-WRITE", b"Select completed"

    def _cmd_close(self, tag: bytes, args: List[Token]) -> Outcome:
        view = self.selected
        assert view is not None
        # Expunges silently (RFC 3501 6.4.2).
        self._do_expunge(view, list(view.uids), report=False)
        self.selected = None
        return None, b"Close completed"

    def _cmd_unselect(self, tag: bytes, args: List[Token]) -> Outcome:
        self.selected = None
        return None, b"Unselect completed"

    def _targets(self, view: _View, spec: Token, uid: bool) -> List[Tuple[int, int]]:
        """(sequence number, UID) of the messages ``spec`` names in the view."""
        uids = view.uids
        found: List[Tuple[int, int]] = []
        if uid:
            ranges = _parse_set(spec, uids[-1] if uids else 0)
            for low, high in ranges.ranges:
                i = bisect.bisect_left(uids, low)
                while i < len(uids) and uids[i] <= high:
                    found.append((i + 1, uids[i]))
                    i += 1
        else:
            ranges = _parse_set(spec, len(uids))
            for low, high in ranges.ranges:
                if high > len(uids):
                    raise _Bad(b"Invalid messageset")
                found.extend((seq, uids[seq - 1]) for seq in range(low, high + 1))
        return found

    def _cmd_uid_fetch(self, tag: bytes, args: List[Token]) -> Outcome:
        return self._do_fetch(args, uid=True)

    def _cmd_fetch(self, tag: bytes, args: List[Token]) -> Outcome:
        return self._do_fetch(args, uid=False)

    def _do_fetch(self, args: List[Token], uid: bool) -> Outcome:
        view = self.selected
        assert view is not None
        mailbox = view.mailbox
        if len(args) not in (2, 3):
            raise _Bad(b"Invalid arguments")
        items_token = args[1]
        names = [
            _word(t) for t in (items_token if isinstance(items_token, list) else [items_token])
        ]
        if b"FAST" in names:
            names.remove(b"FAST")
            names += [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"]
        for item in names:
            if item not in _FETCH_ITEMS:
                raise _Bad(b"Unknown parameter: " + item)
        changedsince: Optional[int] = None
        vanished = False
        if len(args) == 3:
            modifiers = args[2]
            if not isinstance(modifiers, list):
                raise _Bad(b"Invalid arguments")
            j = 0
            while j < len(modifiers):
                modifier = _word(modifiers[j])
                if modifier == b"CHANGEDSINCE" and j + 1 < len(modifiers):
                    changedsince = _number(modifiers[j + 1])
                    j += 2
                elif modifier == b"VANISHED":
                    vanished = True
                    j += 1
                else:
                    raise _Bad(b"Unknown FETCH modifier")
        if vanished and (not uid or not self.qresync):
            raise _Bad(b"QRESYNC not enabled")
        if vanished and changedsince is None:
            raise _Bad(b"VANISHED used without CHANGEDSINCE")
        if changedsince is not None or b"MODSEQ" in names:
            if not self._has(b"CONDSTORE"):
                raise _Bad(b"Unknown parameter: MODSEQ")
            self.condstore = True
        if uid:
            names = [b"UID"] + [n for n in names if n != b"UID"]
        if changedsince is not None and b"MODSEQ" not in names:
            names.append(b"MODSEQ")
        targets = self._targets(view, args[0], uid)
        if vanished:
            assert changedsince is not None
            wanted = _parse_set(args[0], max(mailbox.uidnext - 1, 1))
            gone = [u for u, m in mailbox.expunged.items() if m > changedsince and u in wanted]
            if gone:
                self._untagged(b"VANISHED (EARLIER) " + _format_set(gone))
        reads = not view.readonly and (b"BODY[]" in names or b"RFC822" in names)
        for seq, message_uid in targets:
            message = mailbox.messages.get(message_uid)
            if message is None:
                continue  # expunged, not yet announced to this session
            if changedsince is not None and message.modseq <= changedsince:
                continue
            fetched = list(names)
            seen_now = reads and _SEEN not in message.flags
            if seen_now:
                up_to_date = view.modseq == mailbox.highestmodseq
                self.store._store(view.name, [message_uid], b"+", [_SEEN], None, self)
                if up_to_date:
                    view.modseq = mailbox.highestmodseq
                if b"FLAGS" not in fetched:
                    fetched.insert(1 if uid else 0, b"FLAGS")
            parts = []
            for item in fetched:
                if item == b"UID":
                    parts.append(b"UID %d" % message_uid)
                elif item == b"FLAGS":
                    recent = message_uid in view.recent
                    parts.append(b"FLAGS " + mailbox.flag_bytes(message.flags, recent))
                elif item == b"MODSEQ":
                    parts.append(b"MODSEQ (%d)" % message.modseq)
                elif item == b"INTERNALDATE":
                    parts.append(b'INTERNALDATE "' + message.internaldate + b'"')
                elif item == b"RFC822.SIZE":
                    parts.append(b"RFC822.SIZE %d" % len(message.body))
                elif item in (b"BODY[]", b"BODY.PEEK[]"):
                    parts.append(b"BODY[] {%d}\r\n" % len(message.body) + message.body)
                elif item == b"RFC822":
                    parts.append(b"RFC822 {%d}\r\n" % len(message.body) + message.body)
            self._untagged(b"%d FETCH (" % seq + b" ".join(parts) + b")")
            if seen_now and self.condstore and b"MODSEQ" not in fetched:
                self._untagged(b"%d FETCH (MODSEQ (%d))" % (seq, message.modseq))
        return None, b"Fetch completed"

    def _cmd_uid_store(self, tag: bytes, args: List[Token]) -> Outcome:
        return self._do_store(args, uid=True)

    def _cmd_store(self, tag: bytes, args: List[Token]) -> Outcome:
        return self._do_store(args, uid=False)

    def _do_store(self, args: List[Token], uid: bool) -> Outcome:
        view = self.selected
        assert view is not None
        mailbox = view.mailbox
        if len(args) < 3:
            raise _Bad(b"Invalid arguments")
        i = 1
        unchangedsince: Optional[int] = None
        if isinstance(args[1], list):
            modifier = args[1]
            if (
                len(modifier) != 2
                or _word(modifier[0]) != b"UNCHANGEDSINCE"
                or not self._has(b"CONDSTORE")
            ):
                raise _Bad(b"Invalid modifier")
            unchangedsince = _number(modifier[1])
            self.condstore = True
            i = 2
        match = _STORE_ITEM.fullmatch(_word(args[i]))
        if match is None:
            raise _Bad(b"Invalid arguments")
        sign, silent = match.group(1), bool(match.group(2))
        values = args[i + 1 :]
        if len(values) == 1 and isinstance(values[0], list):
            values = values[0]
        if not all(isinstance(v, _Atom) for v in values):
            raise _Bad(b"Invalid arguments")
        flags = [bytes(v) for v in values]
        _check_flags(flags)
        targets = self._targets(view, args[0], uid)
        if view.readonly:
            # Dovecot registers new keywords all the same.
            _canonical_flags(flags, mailbox.keywords)
            self._report_keywords(view)
            return None, b"Store ignored with read-only mailbox"
        up_to_date = view.modseq == mailbox.highestmodseq
        changed, modified = self.store._store(
            view.name, [u for _, u in targets], sign, flags, unchangedsince, self
        )
        self._report_keywords(view)
        changed_set = set(changed)
        for seq, message_uid in targets:
            if message_uid not in changed_set:
                continue
            message = mailbox.messages[message_uid]
            parts = [b"UID %d" % message_uid] if uid else []
            if self.condstore:
                parts.append(b"MODSEQ (%d)" % message.modseq)
            if not silent:
                recent = message_uid in view.recent
                parts.append(b"FLAGS " + mailbox.flag_bytes(message.flags, recent))
            if self.condstore or not silent:
                self._untagged(b"%d FETCH (" % seq + b" ".join(parts) + b")")
        if changed and up_to_date:
            # The new MODSEQs were in the FETCH responses.
            view.modseq = mailbox.highestmodseq
        if modified:
            numbers = modified if uid else [view.seq(u) for u in modified]
            return b"MODIFIED " + _format_set(numbers), b"Conditional store failed"
        return None, b"Store completed"

    def _cmd_uid_expunge(self, tag: bytes, args: List[Token]) -> Outcome:
        if len(args) != 1:
            raise _Bad(b"Invalid arguments")
        view = self.selected
        assert view is not None
        return self._do_expunge(view, [u for _, u in self._targets(view, args[0], True)])

    def _cmd_expunge(self, tag: bytes, args: List[Token]) -> Outcome:
        view = self.selected
        assert view is not None
        return self._do_expunge(view, list(view.uids))

    def _do_expunge(self, view: _View, uids: List[int], report: bool = True) -> Outcome:
        if not view.readonly:
            messages = view.mailbox.messages
            deleted = [u for u in uids if u in messages and _DELETED in messages[u].flags]
            gone = self.store._expunge(view.name, deleted, self)
            if report:
                self._report_expunged(view, gone)
        return None, b"Expunge completed"

    def _report_expunged(self, view: _View, gone: Iterable[int]) -> None:
        known = set(view.uids)
        uids = sorted(u for u in gone if u in known)
        if not uids:
            return
        if self.qresync:
            self._untagged(b"VANISHED " + _format_set(uids))
            removed = set(uids)
            view.uids = [u for u in view.uids if u not in removed]
        else:
            for uid in uids:
                seq = view.seq(uid)
                self._untagged(b"%d EXPUNGE" % seq)
                del view.uids[seq - 1]
        if view.recent.intersection(uids):
            view.recent.difference_update(uids)
            self._untagged(b"%d RECENT" % len(view.recent))

    def _report_keywords(self, view: _View) -> None:
        mailbox = view.mailbox
        if len(mailbox.keywords) == view.keywords:
            return
        view.keywords = len(mailbox.keywords)
        flags = b" ".join(SYSTEM_FLAGS + tuple(mailbox.keywords))
        self._untagged(b"FLAGS (" + flags + b")")
        if view.readonly:
            self._untagged(b"OK [PERMANENTFLAGS ()] Read-only mailbox.")
        else:
            self._untagged(b"OK [PERMANENTFLAGS (" + flags + b" \\*)] Flags permitted.")

    def _cmd_uid_search(self, tag: bytes, args: List[Token]) -> Outcome:
        return self._do_search(tag, args, uid=True)

    def _cmd_search(self, tag: bytes, args: List[Token]) -> Outcome:
        return self._do_search(tag, args, uid=False)

    def _do_search(self, tag: bytes, args: List[Token], uid: bool) -> Outcome:
        view = self.selected
        assert view is not None
        i = 0
        returns: Optional[List[bytes]] = None
        if args and isinstance(args[0], _Atom) and _word(args[0]) == b"RETURN":
            if len(args) < 2 or not isinstance(args[1], list) or not self._has(b"ESEARCH"):
                raise _Bad(b"Invalid arguments")
            returns = [_word(t) for t in args[1]] or [b"ALL"]
            i = 2
        if i < len(args) and isinstance(args[i], _Atom) and _word(args[i]) == b"CHARSET":
            i += 2
        keys = args[i:]
        if not keys:
            raise _Bad(b"Missing search parameters")
        test = self._search_all(keys, view)
        matches = []
        for seq, message_uid in enumerate(view.uids, 1):
            message = view.mailbox.messages.get(message_uid)
            if message is not None and test(seq, message_uid, message):
                matches.append(message_uid if uid else seq)
        if returns is None:
            self._untagged(b"SEARCH" + b"".join(b" %d" % n for n in matches))
            return None, b"Search completed"
        parts = [b'ESEARCH (TAG "' + tag + b'")']
        if uid:
            parts.append(b"UID")
        for option in returns:
            if option == b"COUNT":
                parts.append(b"COUNT %d" % len(matches))
            elif not matches:
                continue
            elif option == b"ALL":
                parts.append(b"ALL " + _format_set(matches))
            elif option == b"MIN":
                parts.append(b"MIN %d" % min(matches))
            elif option == b"MAX":
                parts.append(b"MAX %d" % max(matches))
            else:
                raise _Bad(b"Unknown RETURN option " + option)
        self._untagged(b" ".join(parts))
        return None, b"Search completed"

    def _search_all(
        self, keys: Sequence[Token], view: _View
    ) -> Callable[[int, int, Message], bool]:
        tests = []
        i = 0
        while i < len(keys):
            test, i = self._search_key(keys, i, view)
            tests.append(test)
        return lambda seq, uid, message: all(t(seq, uid, message) for t in tests)

    def _search_key(
        self, keys: Sequence[Token], i: int, view: _View
    ) -> Tuple[Callable[[int, int, Message], bool], int]:
        token = keys[i]
        if isinstance(token, list):
            return self._search_all(token, view), i + 1
        key = _word(token)
        flag_keys = {
            b"ANSWERED": b"\\Answered",
            b"DELETED": _DELETED,
            b"DRAFT": b"\\Draft",
            b"FLAGGED": b"\\Flagged",
            b"SEEN": _SEEN,
        }
        if key == b"ALL":
            return (lambda s, u, m: True), i + 1
        if key in flag_keys:
            flag = flag_keys[key]
            return (lambda s, u, m: flag in m.flags), i + 1
        if key.startswith(b"UN") and key[2:] in flag_keys:
            flag = flag_keys[key[2:]]
            return (lambda s, u, m: flag not in m.flags), i + 1
        if key in (b"RECENT", b"OLD", b"NEW"):
            recent = view.recent
            if key == b"RECENT":
                return (lambda s, u, m: u in recent), i + 1
            if key == b"OLD":
                return (lambda s, u, m: u not in recent), i + 1
            return (lambda s, u, m: u in recent and _SEEN not in m.flags), i + 1
        if key in (b"KEYWORD", b"UNKEYWORD") and i + 1 < len(keys):
            lowered = _astring(keys[i + 1]).lower()
            present = key == b"KEYWORD"
            return (lambda s, u, m: any(f.lower() == lowered for f in m.flags) == present), i + 2
        if key == b"NOT" and i + 1 < len(keys):
            inner, j = self._search_key(keys, i + 1, view)
            return (lambda s, u, m: not inner(s, u, m)), j
        if key == b"OR" and i + 1 < len(keys):
            first, j = self._search_key(keys, i + 1, view)
            if j >= len(keys):
                raise _Bad(b"Missing search parameters")
            second, k = self._search_key(keys, j, view)
            return (lambda s, u, m: first(s, u, m) or second(s, u, m)), k
        if key in (b"LARGER", b"SMALLER") and i + 1 < len(keys):
            size = _number(keys[i + 1])
            if key == b"LARGER":
                return (lambda s, u, m: len(m.body) > size), i + 2
            return (lambda s, u, m: len(m.body) < size), i + 2
        if key == b"MODSEQ" and i + 1 < len(keys) and self._has(b"CONDSTORE"):
            self.condstore = True
            modseq = _number(keys[i + 1])
            return (lambda s, u, m: m.modseq >= modseq), i + 2
        if key == b"UID" and i + 1 < len(keys):
            uids = _parse_set(keys[i + 1], view.uids[-1] if view.uids else 0)
            return (lambda s, u, m: u in uids), i + 2
        if key[:1].isdigit() or key[:1] == b"*":
            seqs = _parse_set(token, len(view.uids))
            return (lambda s, u, m: s in seqs), i + 1
        raise _Bad(b"Unknown argument " + key)

    # -- NOTIFY ------------------------------------------------------------

    def _cmd_notify(self, tag: bytes, args: List[Token]) -> Outcome:
        if not args:
            raise _Bad(b"Invalid arguments")
        operation = _word(args[0])
        if operation == b"NONE" and len(args) == 1:
            self.notify = None
            self._notify_silenced = False
            return None, b"NOTIFY completed"
        if operation != b"SET":
            raise _Bad(b"Invalid arguments")
        spec = _NotifySpec()
        groups = args[1:]
        if groups and isinstance(groups[0], _Atom) and _word(groups[0]) == b"STATUS":
            spec.status = True
            groups = groups[1:]
        for group in groups:
            if not isinstance(group, list) or len(group) < 2:
                raise _Bad(b"Invalid arguments")
            kind = _word(group[0])
            j = 1
            names: Tuple[bytes, ...] = ()
            if kind in (b"SUBTREE", b"MAILBOXES"):
                value = group[1]
                names = tuple(
                    self.store.normalize(_astring(n))
                    for n in (value if isinstance(value, list) else [value])
                )
                j = 2
            if j >= len(group):
                raise _Bad(b"Invalid arguments")
            events_token = group[j]
            events: Set[bytes] = set()
            fetch: Tuple[bytes, ...] = ()
            if isinstance(events_token, list):
                k = 0
                while k < len(events_token):
                    event = _word(events_token[k])
                    events.add(event)
                    if (
                        event == b"MESSAGENEW"
                        and k + 1 < len(events_token)
                        and isinstance(events_token[k + 1], list)
                    ):
                        fetch = tuple(_word(t) for t in events_token[k + 1])
                        k += 1
                    k += 1
            elif _word(events_token) != b"NONE":
                raise _Bad(b"Invalid arguments")
            if kind in (b"SELECTED", b"SELECTED-DELAYED"):
                spec.selected_events = frozenset(events)
                spec.selected_fetch = fetch
            elif kind in (b"PERSONAL", b"INBOXES", b"SUBSCRIBED", b"SUBTREE", b"MAILBOXES"):
                spec.filters.append((kind, names, frozenset(events)))
            else:
                raise _Bad(b"Unknown filter " + kind)
        if self.notify is not None:
            # Dovecot 2.3.19 sends nothing more after a NOTIFY SET that
            # replaces another (until NOTIFY NONE).
            self._notify_silenced = True
        self.notify = spec
        if spec.status:
            for name in self.store.names():
                mailbox = self.store.mailboxes.get(name)
                if mailbox is None or (self.selected and self.selected.mailbox is mailbox):
                    continue
                if spec.events_for(name, self.store) & {b"MESSAGENEW", b"MESSAGEEXPUNGE"}:
                    items = [b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN"]
                    self._untagged(self._status_line(name, mailbox, items))
        return None, b"NOTIFY completed"

    # -- what other clients did --------------------------------------------

    def store_changed(self, event: _Event) -> None:
        """The store changed: note it for the selected mailbox, or send a NOTIFY event."""
        if self._closed:
            return
        view = self.selected
        if view is not None and event.mailbox is view.mailbox:
            if event.kind == "flags" and event.origin is not self:
                view.flag_changes.update(event.uids)
            elif event.kind == "expunge" and event.origin is not self:
                view.expunged.update(event.uids)
            elif event.kind in ("reset", "deleted"):
                # Dovecot: BYE at the next command.
                self._inconsistent = True
            elif event.kind == "renamed":
                view.name = event.name
            if event.kind in ("new", "flags", "expunge", "reset"):
                # No STATUS for the selected mailbox (RFC 5465 5.2).
                return
        spec = self.notify
        if spec is None or (self.notify_quirk and self._notify_silenced):
            return
        if _EVENT_NAMES[event.kind] not in spec.events_for(event.name, self.store):
            return
        line = self._event_line(event)
        if line is not None:
            self._write(b"* " + line + b"\r\n")

    def _event_line(self, event: _Event) -> Optional[bytes]:
        name = event.name
        if event.kind in ("new", "expunge", "flags", "reset"):
            mailbox = event.mailbox
            assert mailbox is not None
            items = {
                "new": [b"MESSAGES", b"UIDNEXT", b"UNSEEN"],
                "expunge": [b"MESSAGES", b"UIDNEXT", b"UNSEEN"],
                "flags": [b"UNSEEN"] if event.seen else [],
                "reset": [b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN"],
            }[event.kind]
            if self.condstore:
                items.append(b"HIGHESTMODSEQ")
            return self._status_line(name, mailbox, items) if items else None
        attributes = self._name_attributes(name, self._parents(), True)
        if event.kind == "subscription" and name in self.store.subscriptions:
            attributes.insert(0, b"\\Subscribed")
        line = (
            b"LIST ("
            + b" ".join(attributes)
            + b') "'
            + self.store.separator
            + b'" '
            + _format_astring(name)
        )
        if event.kind == "renamed" and event.old is not None:
            line += b' ("OLDNAME" (' + _format_astring(event.old) + b"))"
        return line

    def _sync_selected(self, code: Optional[bytes]) -> Optional[bytes]:
        """Tell the client what changed in its mailbox (before a tagged response).

        Returns the tagged response code, which carries [HIGHESTMODSEQ]
        when it has no other code (as Dovecot does).
        """
        view = self.selected
        if view is None:
            return code
        mailbox = view.mailbox
        self._report_keywords(view)
        # The highest MODSEQ the FETCH responses below tell the client.
        told = 0
        if view.flag_changes:
            for uid in sorted(view.flag_changes):
                message = mailbox.messages.get(uid)
                if message is None or uid in view.expunged:
                    continue
                i = bisect.bisect_left(view.uids, uid)
                if i >= len(view.uids) or view.uids[i] != uid:
                    continue
                flags = mailbox.flag_bytes(message.flags, uid in view.recent)
                if self.condstore:
                    told = max(told, message.modseq)
                    self._untagged(
                        b"%d FETCH (UID %d MODSEQ (%d) FLAGS %s)"
                        % (i + 1, uid, message.modseq, flags)
                    )
                else:
                    self._untagged(b"%d FETCH (FLAGS %s)" % (i + 1, flags))
            view.flag_changes.clear()
        if view.expunged:
            self._report_expunged(view, view.expunged)
            view.expunged.clear()
        if mailbox.uidnext > view.uidnext:
            new = []
            for uid in reversed(mailbox.messages):
                if uid < view.uidnext:
                    break
                new.append(uid)
            new.reverse()
            view.uidnext = mailbox.uidnext
            if new:
                view.uids.extend(new)
                self._untagged(b"%d EXISTS" % len(view.uids))
                if not view.readonly:
                    claimed = [u for u in new if u >= mailbox.recent_floor]
                    mailbox.recent_floor = max(mailbox.recent_floor, mailbox.uidnext)
                    if claimed:
                        view.recent.update(claimed)
                        self._untagged(b"%d RECENT" % len(view.recent))
                told = max(told, self._report_new(view, new))
        if self.condstore and mailbox.highestmodseq > view.modseq:
            view.modseq = mailbox.highestmodseq
            if told >= view.modseq:
                return code
            if code is None or code.startswith(b"HIGHESTMODSEQ "):
                return b"HIGHESTMODSEQ %d" % view.modseq
            self._untagged(b"OK [HIGHESTMODSEQ %d] Highest" % view.modseq)
        return code

    def _report_new(self, view: _View, uids: List[int]) -> int:
        """NOTIFY's MessageNew (fetch-att) for the selected mailbox; returns
        the highest MODSEQ told."""
        spec = self.notify
        if spec is None or b"MESSAGENEW" not in spec.selected_events or not spec.selected_fetch:
            return 0
        told = 0
        mailbox = view.mailbox
        for uid in uids:
            message = mailbox.messages[uid]
            parts = []
            for item in spec.selected_fetch:
                if item == b"UID":
                    parts.append(b"UID %d" % uid)
                elif item == b"MODSEQ":
                    parts.append(b"MODSEQ (%d)" % message.modseq)
                    told = max(told, message.modseq)
                elif item == b"FLAGS":
                    parts.append(b"FLAGS " + mailbox.flag_bytes(message.flags, uid in view.recent))
            if parts:
                self._untagged(b"%d FETCH (" % view.seq(uid) + b" ".join(parts) + b")")
        return told


# --- wiring: our client, a fake server, in memory ------------------------------------


@attrs.define(eq=False)
class FakeNetwork:
    """Connections from our client to fake servers, pumped together by `run`."""

    clock: Any
    pumps: List[iosim.IOPump] = attrs.field(factory=list)

    def open(
        self,
        store: MailStore,
        name: str = "local",
        *,
        username: Optional[str] = None,
        password: Optional[str] = None,
        auth: Sequence[str] = ("PLAIN", "LOGIN"),
        timeout: float = DEFAULT_TIMEOUT,
        window: int = DEFAULT_WINDOW,
        debug: int = 0,
        **server_options: Any,
    ) -> Deferred[IMAPSession]:
        """Connect; the Deferred fires with the session once greeted (and
        logged in, for a server with ``preauth=False``) as pumps run."""
        server = FakeIMAPServer(store, **server_options)
        client = IMAP4ClientProtocol(
            self.clock, window=window, timeout=timeout, name=name, debug=debug
        )
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=False
        )
        self.pumps.append(pump)

        async def setup() -> IMAPSession:
            greeting = await client.greeting
            session = IMAPSession(client, name)
            if greeting.status != b"PREAUTH":
                await session.authenticate(auth, username, password)
            return session

        return Deferred.fromCoroutine(setup())

    def connect(self, store: MailStore, name: str = "local", **options: Any) -> IMAPSession:
        """`open` and run until the session is ready."""
        return self.run(self.open(store, name, **options))

    def run(self, d: Deferred[T], max_iterations: int = 100_000) -> T:
        return run(d, self.pumps, self.clock, max_iterations)


def connect_session(
    store: MailStore, clock: Any, name: str = "local", **options: Any
) -> Tuple[IMAPSession, iosim.IOPump]:
    """Our client connected to a new `FakeIMAPServer` on ``store``, greeted.

    ``options``: ``username``/``password``/``auth`` for a server with
    ``preauth=False``, the client's ``timeout``/``window``/``debug``, and
    `FakeIMAPServer` keywords (``capabilities``, ``preauth``, ``users``).
    The pump's ``server`` attribute is the `FakeIMAPServer`.
    """
    network = FakeNetwork(clock)
    session = network.connect(store, name, **options)
    return session, network.pumps[0]


def run(
    d: Deferred[T],
    pumps: Sequence[iosim.IOPump],
    clock: Any = None,
    max_iterations: int = 100_000,
) -> T:
    """Pump until ``d`` fires; return its result or raise its failure.

    Each iteration moves bytes on every pump (``pumps`` is re-read, so
    connections opened meanwhile join in).  When nothing moves, the
    Clock (if it is one) advances to its next timer; when there is none,
    nothing can progress and this raises.  ``d``'s result is consumed.
    """
    results: List[object] = []
    d.addBoth(results.append)
    for _ in range(max_iterations):
        if results:
            break
        moved = False
        for pump in list(pumps):
            if pump.pump():
                moved = True
        if results or moved:
            continue
        calls = clock.getDelayedCalls() if hasattr(clock, "advance") else []
        if not calls:
            raise AssertionError(
                "stalled: the Deferred has not fired, no byte is moving and no timer is pending"
            )
        next_time = min(call.getTime() for call in calls)
        clock.advance(max(0.0, next_time - clock.seconds()))
    else:
        raise AssertionError(f"the Deferred did not fire within {max_iterations} iterations")
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result  # type: ignore[return-value]

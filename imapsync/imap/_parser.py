# -*- test-case-name: tests.test_imap_parser -*-
"""Incremental parser of IMAP4rev1 server responses: framing, literals, tokens.

``feed()`` what the transport delivers; ``next_response()`` hands out one
complete response at a time, or None until more bytes arrive, so that the
protocol can stop between responses (backpressure).
"""

from __future__ import annotations

import io
import re
from typing import Callable, Dict, List, NoReturn, Optional, Tuple, Union

from imapsync.imap.errors import ProtocolError
from imapsync.imap.response import (
    CapabilityResponse,
    ConditionResponse,
    ContinuationRequest,
    EnabledResponse,
    ESearchResponse,
    FetchResponse,
    FlagsResponse,
    ListResponse,
    NumberResponse,
    Response,
    ResponseCode,
    StatusResponse,
    TaggedResponse,
    Token,
    UntaggedResponse,
    VanishedResponse,
)
from imapsync.imap.spool import SPOOL_AT, Body, SpooledBody
from imapsync.imap.uidset import UIDSet, parse_uid_list

__all__ = ["DEFAULT_MAX_LINE", "DEFAULT_MAX_LITERAL", "ResponseParser"]

DEFAULT_MAX_LINE = 64 * 1024 * 1024
DEFAULT_MAX_LITERAL = 1024 * 1024 * 1024

# Literals from this size on are collected in a BytesIO as they arrive, so the
# receive buffer does not hold them whole and getvalue() hands over the
# collected bytes without a copy: peak memory about 1x the literal.  From
# SPOOL_AT on, they go to a file instead (imapsync.imap.spool).
_BIG_LITERAL = 64 * 1024
# Consumed bytes are dropped from the buffer's front once they are this many
# and at least half of it: amortized linear, whatever the chunk sizes.
_COMPACT_AT = 1024 * 1024

_SP, _LPAREN, _RPAREN, _DQUOTE, _LBRACE, _TILDE = b' ()"{~'

# A literal announcement ending a line segment, looked for only in its last
# bytes (the longest, b"~{" + 20 digits + b"+}", is 24 bytes).
_LITERAL_AT_END = re.compile(rb"~?\{([0-9]{1,20})\+?\}\Z")
_LITERAL_SPEC = re.compile(rb"~?\{([0-9]{1,20})\+?\}")
# An atom, where a bracketed part may hold spaces and parentheses so that
# BODY[HEADER.FIELDS (A B)]<0> is one fetch item name.  "]" is allowed
# outside brackets (resp-specials are ASTRING-CHARs).
_ATOM = re.compile(rb'(?:[^\x00-\x20\x7f(){"\[]|\[[^\]\x00-\x1f\x7f]*\])+')
# Mailbox names given as atoms, and flags (which start with "\" or are keywords).
_ASTRING_ATOM = re.compile(rb'[^\x00-\x20\x7f(){"]+')
# Unrolled "(?:[^"\\]|\\["\\])*": one fast scan for strings without escapes.
_QUOTED = re.compile(rb'"([^"\\]*(?:\\["\\][^"\\]*)*)"')
_QUOTED_ESCAPE = re.compile(rb'\\(["\\])')
_TAG = re.compile(rb'[^\x00-\x20\x7f(){"%*+\\]+')

# The start and the items both fast paths below know: "* n FETCH (", then
# UID, MODSEQ and FLAGS as alternatives, each a group of its own.
_FAST_START = rb"\* ([0-9]{1,10}) FETCH \("
_FAST_ITEMS = (
    rb"UID ([0-9]{1,10})"
    rb"|MODSEQ \(([0-9]{1,20})\)"
    rb'|FLAGS \(((?:[^\x00-\x20\x7f(){"]+(?: [^\x00-\x20\x7f(){"]+)*)?)\)'
)

# The hot shape while synchronizing flags: "* n FETCH (UID u MODSEQ (m)
# FLAGS (...))", items in any order, no literal.  One fullmatch replaces the
# tokenizer; anything else takes the generic path.  A repeated group keeps
# its last capture, so each item lands in its own group whatever the order.
_FAST_FETCH = re.compile(
    _FAST_START + rb"(?:(?:" + _FAST_ITEMS + rb")(?: (?=[UMF])|(?=\))))+" + rb"\)"
)

# The hot shape while copying: "* n FETCH (UID u MODSEQ (m) FLAGS (...)
# INTERNALDATE "..." BODY[] {size}", the same items in any order before the
# body, then the literal and ")" alone.  Same idea as _FAST_FETCH.
_FAST_BODY = re.compile(
    _FAST_START
    + rb"(?:(?:"
    + _FAST_ITEMS
    + rb'|INTERNALDATE "([^"\\\x00-\x1f\x7f]*)"'
    + rb") )+"
    + rb"(?:BODY\[\]|RFC822) \{[0-9]{1,20}\}"
)

_BODY_ITEMS = frozenset([b"BODY[]", b"BODY[]<0>", b"RFC822"])
_NUMBER_RESPONSES = frozenset([b"EXISTS", b"EXPUNGE", b"RECENT"])
_STATUS_CONDITIONS = frozenset([b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"])
_TAGGED_STATUSES = frozenset([b"OK", b"NO", b"BAD"])


def _to_int(value: Token, what: str) -> int:
    # isdigit() on bytes is ASCII-only; the length cap keeps int() cheap and
    # within the 63 bits of mod-sequences.
    if not isinstance(value, bytes) or not (0 < len(value) <= 20 and value.isdigit()):
        raise ProtocolError(f"expected a number for {what}, got {value!r}")
    return int(value)


def _mailbox_name(name: bytes) -> bytes:
    # INBOX is case-insensitive (RFC 3501 5.1); its children are not.
    return b"INBOX" if name.upper() == b"INBOX" else name


class _Reader:
    """A cursor over one framed response: line segments with literals between them.

    ``parts`` is ``[segment, literal, segment, ..., segment]``: each segment
    but the last ends with a literal announcement, whose bytes follow it.
    """

    __slots__ = ("_parts", "_index", "data", "pos")

    def __init__(self, parts: List[Body]) -> None:
        self._parts = parts
        self._index = 0
        first = parts[0]
        assert isinstance(first, bytes)
        self.data = first
        self.pos = 0

    def error(self, what: str) -> NoReturn:
        start = max(0, self.pos - 40)
        context = self.data[start : self.pos + 40]
        raise ProtocolError(f"{what} at offset {self.pos} of a response line: {context!r}")

    def at_end(self) -> bool:
        return self.pos >= len(self.data) and self._index == len(self._parts) - 1

    def end(self) -> None:
        if not self.at_end():
            self.error("unexpected data")

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < len(self.data) else -1

    def sp(self) -> None:
        if self.peek() != _SP:
            self.error("expected a space")
        self.pos += 1

    def expect(self, byte: int) -> None:
        if self.peek() != byte:
            self.error(f"expected {chr(byte)!r}")
        self.pos += 1

    def match(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        found = pattern.match(self.data, self.pos)
        if found is None:
            self.error(f"expected {what}")
        self.pos = found.end()
        return found.group()

    def atom(self) -> bytes:
        return self.match(_ATOM, "an atom")

    def rest(self) -> bytes:
        """The rest of the line, which must hold no literal."""
        if self._index != len(self._parts) - 1:
            self.error("unexpected literal")
        value = self.data[self.pos :]
        self.pos = len(self.data)
        return value

    def quoted(self) -> bytes:
        found = _QUOTED.match(self.data, self.pos)
        if found is None:
            self.error("invalid quoted string")
        self.pos = found.end()
        value = found.group(1)
        return _QUOTED_ESCAPE.sub(rb"\1", value) if b"\\" in value else value

    def literal(self) -> bytes:
        value = self.any_literal()
        if not isinstance(value, bytes):
            self.error(
                f"literal of {len(value)} bytes where only a message body may be that large"
            )
        return value

    def any_literal(self) -> Body:
        """The literal here, spooled to a file if it is large."""
        # The framer split the response after this announcement; the literal
        # is the next part and reading goes on with the segment after it.
        found = _LITERAL_SPEC.match(self.data, self.pos)
        if found is None or found.end() != len(self.data):
            self.error("invalid literal")
        if self._index + 2 >= len(self._parts):
            self.error("missing literal")
        value = self._parts[self._index + 1]
        self._index += 2
        data = self._parts[self._index]
        assert isinstance(data, bytes)
        self.data = data
        self.pos = 0
        return value

    def _is_literal(self) -> bool:
        char = self.peek()
        if char == _LBRACE:
            return True
        return char == _TILDE and self.data[self.pos + 1 : self.pos + 2] == b"{"

    def astring(self) -> bytes:
        """An atom, quoted string or literal; the atom NIL stays b"NIL"."""
        if self.peek() == _DQUOTE:
            return self.quoted()
        if self._is_literal():
            return self.literal()
        return self.match(_ASTRING_ATOM, "a string")

    def scalar(self) -> Optional[bytes]:
        if self.peek() == _DQUOTE:
            return self.quoted()
        if self._is_literal():
            return self.literal()
        value = self.atom()
        return None if len(value) == 3 and value.upper() == b"NIL" else value

    def token(self) -> Token:
        """Any value: string, NIL (None) or a parenthesized list."""
        if self.peek() == _LPAREN:
            return self.list_token("a list")
        return self.scalar()

    def list_token(self, what: str) -> List[Token]:
        """A parenthesized list of tokens, nested at will.

        Built with an explicit stack: deep nesting sent by a hostile server
        cannot exhaust Python's recursion limit.
        """
        if self.peek() != _LPAREN:
            self.error(f"expected a list for {what}")
        stack: List[List[Token]] = []
        while True:
            if self.peek() == _LPAREN:
                self.pos += 1
                child: List[Token] = []
                if stack:
                    stack[-1].append(child)
                stack.append(child)
                if self.peek() != _RPAREN:
                    continue
            else:
                stack[-1].append(self.scalar())
            while self.peek() == _RPAREN:
                self.pos += 1
                done = stack.pop()
                if not stack:
                    return done
            self.sp()

    def flag_list(self) -> Tuple[bytes, ...]:
        """A parenthesized list of flags (or attributes), kept as sent."""
        self.expect(_LPAREN)
        flags: List[bytes] = []
        if self.peek() != _RPAREN:
            flags.append(self.match(_ASTRING_ATOM, "a flag"))
            while self.peek() == _SP:
                self.pos += 1
                flags.append(self.match(_ASTRING_ATOM, "a flag"))
        self.expect(_RPAREN)
        return tuple(flags)

    def args(self) -> List[Token]:
        """Space-separated tokens up to the end of the response."""
        args: List[Token] = []
        while not self.at_end():
            self.sp()
            # Some servers end e.g. an empty "* SEARCH " with a space.
            if self.at_end():
                break
            args.append(self.token())
        return args


def _pairs(items: List[Token], what: str) -> List[Tuple[bytes, Token]]:
    """``[NAME, value, NAME, value, ...]`` as (upper-cased name, value) pairs."""
    if len(items) % 2:
        raise ProtocolError(f"odd number of items in {what}: {items!r}")
    pairs = []
    for index in range(0, len(items), 2):
        name = items[index]
        if not isinstance(name, bytes):
            raise ProtocolError(f"invalid item name in {what}: {name!r}")
        pairs.append((name.upper(), items[index + 1]))
    return pairs


# -- response codes -------------------------------------------------------


def _code_appenduid(arg: bytes) -> object:
    uidvalidity, _, uids = arg.partition(b" ")
    return (_to_int(uidvalidity, "APPENDUID"), parse_uid_list(uids))


def _code_copyuid(arg: bytes) -> object:
    fields = arg.split(b" ")
    if len(fields) != 3:
        raise ProtocolError(f"invalid COPYUID response code argument {arg!r}")
    source, destination = parse_uid_list(fields[1]), parse_uid_list(fields[2])
    if len(source) != len(destination):
        raise ProtocolError(f"COPYUID maps {len(source)} UIDs to {len(destination)}")
    return (_to_int(fields[0], "COPYUID"), source, destination)


def _code_number(arg: bytes) -> object:
    return _to_int(arg, "a response code")


def _code_capability(arg: bytes) -> object:
    return tuple(arg.upper().split())


def _code_permanentflags(arg: bytes) -> object:
    reader = _Reader([arg])
    flags = reader.flag_list()
    reader.end()
    return flags


def _code_badcharset(arg: bytes) -> object:
    if not arg:
        return ()
    reader = _Reader([arg])
    charsets = reader.list_token("BADCHARSET")
    reader.end()
    if not all(isinstance(charset, bytes) for charset in charsets):
        raise ProtocolError(f"invalid BADCHARSET list {arg!r}")
    return tuple(charsets)


_CODE_PARSERS: Dict[bytes, Callable[[bytes], object]] = {
    b"UIDVALIDITY": _code_number,
    b"UIDNEXT": _code_number,
    b"HIGHESTMODSEQ": _code_number,
    b"UNSEEN": _code_number,
    b"APPENDUID": _code_appenduid,
    b"COPYUID": _code_copyuid,
    b"MODIFIED": UIDSet.parse,
    b"CAPABILITY": _code_capability,
    b"PERMANENTFLAGS": _code_permanentflags,
    b"BADCHARSET": _code_badcharset,
}


def _response_code(body: bytes) -> ResponseCode:
    """Parse what is between ``[`` and ``]``.

    Codes not in _CODE_PARSERS (ALERT, CLOSED, NOMODSEQ, UIDNOTSTICKY, ...,
    and any extension) keep their raw argument, or None without one.
    """
    name, _, arg = body.partition(b" ")
    if _ATOM.fullmatch(name) is None:
        raise ProtocolError(f"invalid response code [{body!r}]")
    name = name.upper()
    parse = _CODE_PARSERS.get(name)
    if parse is None:
        return ResponseCode(name, arg or None)
    return ResponseCode(name, parse(arg))


def _resp_text(reader: _Reader) -> Tuple[Optional[ResponseCode], bytes]:
    """``[SP ["[" code "]" [SP]] text]``, to the end of the line."""
    if reader.at_end():
        return None, b""
    reader.sp()
    text = reader.rest()
    if not text.startswith(b"["):
        return None, text
    # The code's argument holds no "]" (RFC 3501 resp-text-code).
    close = text.find(b"]")
    if close < 0:
        reader.error("unterminated response code")
    code = _response_code(text[1:close])
    text = text[close + 1 :]
    return code, text[1:] if text.startswith(b" ") else text


# -- untagged responses ---------------------------------------------------


def _parse_condition(reader: _Reader, name: bytes) -> Response:
    code, text = _resp_text(reader)
    return ConditionResponse(name, code, text)


def _capability_list(reader: _Reader) -> Tuple[bytes, ...]:
    if reader.at_end():
        return ()
    reader.sp()
    return tuple(reader.rest().upper().split())


def _parse_capability(reader: _Reader, name: bytes) -> Response:
    return CapabilityResponse(_capability_list(reader))


def _parse_enabled(reader: _Reader, name: bytes) -> Response:
    return EnabledResponse(_capability_list(reader))


def _parse_flags(reader: _Reader, name: bytes) -> Response:
    reader.sp()
    flags = reader.flag_list()
    reader.end()
    return FlagsResponse(flags)


def _parse_list(reader: _Reader, name: bytes) -> Response:
    reader.sp()
    attributes = reader.flag_list()
    reader.sp()
    delimiter = reader.token()
    if delimiter is not None and not (isinstance(delimiter, bytes) and len(delimiter) == 1):
        reader.error("invalid hierarchy delimiter")
    reader.sp()
    mailbox = _mailbox_name(reader.astring())
    extended: Dict[bytes, Token] = {}
    if not reader.at_end():
        reader.sp()
        extended = dict(_pairs(reader.list_token("extended LIST data"), "LIST"))
    reader.end()
    return ListResponse(name, attributes, delimiter, mailbox, extended)


def _parse_status(reader: _Reader, name: bytes) -> Response:
    reader.sp()
    mailbox = _mailbox_name(reader.astring())
    reader.sp()
    items = reader.list_token("STATUS")
    reader.end()
    values = {item: _to_int(value, "STATUS") for item, value in _pairs(items, "STATUS")}
    return StatusResponse(mailbox, values)


def _parse_esearch(reader: _Reader, name: bytes) -> Response:
    args = reader.args()
    tag: Optional[bytes] = None
    correlator = args[0] if args else None
    if isinstance(correlator, list):
        del args[0]
        keyword, value = correlator if len(correlator) == 2 else (None, None)
        if not (
            isinstance(keyword, bytes) and keyword.upper() == b"TAG" and isinstance(value, bytes)
        ):
            raise ProtocolError(f"invalid ESEARCH correlator {correlator!r}")
        tag = value
    uid = False
    if args and isinstance(args[0], bytes) and args[0].upper() == b"UID":
        args.pop(0)
        uid = True
    items: Dict[bytes, object] = {}
    for item, value in _pairs(args, "ESEARCH"):
        if item == b"ALL":
            if not isinstance(value, bytes):
                raise ProtocolError(f"invalid ESEARCH ALL {value!r}")
            items[item] = UIDSet.parse(value)
        elif item in (b"MIN", b"MAX", b"COUNT", b"MODSEQ"):
            items[item] = _to_int(value, "ESEARCH")
        else:
            items[item] = value
    return ESearchResponse(tag, uid, items)


def _parse_vanished(reader: _Reader, name: bytes) -> Response:
    reader.sp()
    earlier = False
    if reader.peek() == _LPAREN:
        modifier = reader.list_token("VANISHED")
        if not (
            len(modifier) == 1
            and isinstance(modifier[0], bytes)
            and modifier[0].upper() == b"EARLIER"
        ):
            reader.error("invalid VANISHED modifier")
        earlier = True
        reader.sp()
    return VanishedResponse(earlier, UIDSet.parse(reader.rest()))


_UNTAGGED_PARSERS: Dict[bytes, Callable[[_Reader, bytes], Response]] = {
    b"CAPABILITY": _parse_capability,
    b"ENABLED": _parse_enabled,
    b"FLAGS": _parse_flags,
    b"LIST": _parse_list,
    b"LSUB": _parse_list,
    b"STATUS": _parse_status,
    b"ESEARCH": _parse_esearch,
    b"VANISHED": _parse_vanished,
}
_UNTAGGED_PARSERS.update(dict.fromkeys(_STATUS_CONDITIONS, _parse_condition))


def _parse_fetch(reader: _Reader, seq: int) -> FetchResponse:
    reader.sp()
    reader.expect(_LPAREN)
    uid: Optional[int] = None
    modseq: Optional[int] = None
    flags: Optional[Tuple[bytes, ...]] = None
    internaldate: Optional[bytes] = None
    size: Optional[int] = None
    body: Optional[Body] = None
    extra: Dict[bytes, Token] = {}
    while True:
        item = reader.atom().upper()
        reader.sp()
        if item == b"UID":
            uid = _to_int(reader.atom(), "UID")
        elif item == b"MODSEQ":
            values = reader.list_token("MODSEQ")
            if len(values) != 1:
                reader.error("invalid MODSEQ")
            modseq = _to_int(values[0], "MODSEQ")
        elif item == b"FLAGS":
            flags = reader.flag_list()
        elif item == b"INTERNALDATE":
            value = reader.scalar()
            if value is None:
                reader.error("invalid INTERNALDATE")
            internaldate = value
        elif item == b"RFC822.SIZE":
            size = _to_int(reader.atom(), "RFC822.SIZE")
        elif item in _BODY_ITEMS:
            if reader.peek() == _LPAREN:
                reader.error("invalid message body")
            body = reader.any_literal() if reader._is_literal() else reader.scalar()
        else:
            extra[item] = reader.token()
        if reader.peek() == _RPAREN:
            reader.pos += 1
            break
        reader.sp()
    reader.end()
    return FetchResponse(seq, uid, modseq, flags, internaldate, size, body, extra)


def _parse_untagged(reader: _Reader) -> Response:
    word = reader.atom()
    if word.isdigit():
        number = _to_int(word, "a message number")
        reader.sp()
        name = reader.atom().upper()
        if name == b"FETCH":
            return _parse_fetch(reader, number)
        if name in _NUMBER_RESPONSES:
            reader.end()
            return NumberResponse(name, number)
        return UntaggedResponse(name, number, tuple(reader.args()))
    name = word.upper()
    parse = _UNTAGGED_PARSERS.get(name)
    if parse is not None:
        return parse(reader, name)
    return UntaggedResponse(name, None, tuple(reader.args()))


def _parse_response(parts: List[Body]) -> Response:
    if len(parts) == 3 and parts[2] == b")":
        head = parts[0]
        assert isinstance(head, bytes)
        match = _FAST_BODY.fullmatch(head)
        if match is not None:
            return _fast_fetch(match, parts[1])
    reader = _Reader(parts)
    line = reader.data
    if line.startswith(b"* "):
        reader.pos = 2
        return _parse_untagged(reader)
    if line.startswith(b"+"):
        reader.pos = 2 if line.startswith(b"+ ") else 1
        return ContinuationRequest(reader.rest())
    tag = reader.match(_TAG, "a tag")
    reader.sp()
    status = reader.atom().upper()
    if status not in _TAGGED_STATUSES:
        reader.error("invalid status of a tagged response")
    code, text = _resp_text(reader)
    return TaggedResponse(tag, status, code, text)


def _fast_fetch(match: re.Match[bytes], body: Optional[Body] = None) -> FetchResponse:
    """The response matched by _FAST_FETCH, or by _FAST_BODY with its ``body``."""
    seq, uid, modseq, flags, *internaldate = match.groups()
    return FetchResponse(
        int(seq),
        None if uid is None else int(uid),
        None if modseq is None else int(modseq),
        None if flags is None else tuple(flags.split()),
        internaldate[0] if internaldate else None,
        None,
        body,
        {},
    )


class ResponseParser:
    """Frame and parse the responses of an IMAP server, one at a time.

    Pull-style: ``feed()`` appends received bytes, ``next_response()``
    returns the next complete response or None when more bytes are needed.
    Anything malformed, a line (literals excluded) longer than ``max_line``
    or a literal longer than ``max_literal`` raises ProtocolError, after
    which the parser's state is undefined: drop the connection.
    """

    def __init__(
        self, max_line: int = DEFAULT_MAX_LINE, max_literal: int = DEFAULT_MAX_LITERAL
    ) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self._buffer = bytearray()
        # Start of the unconsumed bytes, and where the CRLF search resumes
        # (the bytes in between hold no CRLF): nothing is scanned twice.
        self._pos = 0
        self._scan = 0
        # The response being framed: segments and the literals between them.
        self._parts: List[Body] = []
        self._line_length = 0  # bytes of its segments so far
        # Bytes of the literal being read still to come; -1 when none.
        self._literal_left = -1
        self._literal_io: Optional[io.BytesIO] = None
        self._spool: Optional[SpooledBody] = None
        # Literals from this size on are spooled to a file.
        self.spool_at = SPOOL_AT
        # For --debug: keep the last response's lines, literals left out.
        self.keep_text = False
        self.last_text = b""

    def feed(self, data: bytes) -> None:
        """Append received bytes (amortized O(len(data)))."""
        self._buffer += data

    def take_remaining(self) -> bytes:
        """Return and forget the bytes received but not yet parsed.

        For STARTTLS (such bytes are an injection) and COMPRESS (they are
        compressed): call it right after ``next_response()`` returned the
        tagged OK, when no response is half framed.
        """
        remaining = bytes(self._buffer[self._pos :])
        self._buffer.clear()
        self._pos = self._scan = 0
        self._parts = []
        self._line_length = 0
        self._literal_left = -1
        self._literal_io = None
        self._spool = None
        return remaining

    def next_response(self) -> Optional[Response]:
        """The next complete response, or None until more bytes are fed."""
        buffer = self._buffer
        while True:
            if self._literal_left >= 0:
                if not self._read_literal():
                    return None
                continue
            end = buffer.find(b"\r\n", self._scan)
            if end < 0:
                self._check_pending_line()
                return None
            start = self._pos
            if end - start + self._line_length > self.max_line:
                self._line_too_long()
            self._pos = self._scan = end + 2
            if not self._parts:
                match = _FAST_FETCH.fullmatch(buffer, start, end)
                if match is not None:
                    # Take the groups out before compacting moves the bytes.
                    response = _fast_fetch(match)
                    if self.keep_text:
                        self.last_text = bytes(buffer[start:end])
                    self._compact()
                    return response
            segment = bytes(buffer[start:end])
            self._compact()
            self._parts.append(segment)
            size = self._announced_literal(segment)
            if size < 0:
                parts = self._parts
                self._parts = []
                self._line_length = 0
                if self.keep_text:
                    # Segments end with their literal's {N}: the bodies stay out.
                    self.last_text = b"".join(p for p in parts[0::2] if isinstance(p, bytes))
                return _parse_response(parts)
            self._line_length += len(segment)
            self._literal_left = size
            if size >= self.spool_at:
                try:
                    self._spool = SpooledBody()
                except OSError as e:
                    self._spool_failed(size, e)
            elif size >= _BIG_LITERAL:
                self._literal_io = io.BytesIO()

    def _announced_literal(self, segment: bytes) -> int:
        """The size of the literal that ends this segment, or -1."""
        if not segment.endswith(b"}"):
            return -1
        found = _LITERAL_AT_END.search(segment, max(0, len(segment) - 24))
        if found is None:
            return -1
        size = int(found.group(1))
        if size > self.max_literal:
            raise ProtocolError(
                f"server announced a literal of {size} bytes, over the limit of {self.max_literal}"
            )
        return size

    def _read_literal(self) -> bool:
        """Consume literal bytes; True once the literal is complete."""
        buffer = self._buffer
        available = len(buffer) - self._pos
        collector: Union[SpooledBody, io.BytesIO, None] = (
            self._spool if self._spool is not None else self._literal_io
        )
        if collector is None:
            if available < self._literal_left:
                return False
            end = self._pos + self._literal_left
            self._parts.append(bytes(buffer[self._pos : end]))
            self._pos = self._scan = end
        else:
            take = min(available, self._literal_left)
            if take:
                with memoryview(buffer) as view:
                    try:
                        collector.write(view[self._pos : self._pos + take])
                    except OSError as e:
                        self._spool_failed(self._literal_left, e)
            self._pos = self._scan = self._pos + take
            self._literal_left -= take
            self._compact()
            if self._literal_left:
                return False
            if self._spool is not None:
                self._spool.finish()
                self._parts.append(self._spool)
                self._spool = None
            else:
                assert self._literal_io is not None
                self._parts.append(self._literal_io.getvalue())
                self._literal_io = None
        self._literal_left = -1
        return True

    def _spool_failed(self, size: int, error: OSError) -> NoReturn:
        self._spool = None
        raise ProtocolError(
            f"cannot keep a message of {size} bytes in a temporary file ({error.strerror}): "
            "set TMPDIR to a directory with room"
        )

    def _check_pending_line(self) -> None:
        """Enforce max_line while a line is incomplete; resume the scan at its end."""
        buffer = self._buffer
        pending = len(buffer) - self._pos
        # A final CR may be the first half of the CRLF.
        if buffer.endswith(b"\r"):
            pending -= 1
        if pending + self._line_length > self.max_line:
            self._line_too_long()
        self._scan = max(self._pos, len(buffer) - 1)

    def _line_too_long(self) -> NoReturn:
        raise ProtocolError(f"server sent a response line longer than {self.max_line} bytes")

    def _compact(self) -> None:
        pos = self._pos
        if pos >= _COMPACT_AT and 2 * pos >= len(self._buffer):
            del self._buffer[:pos]
            self._scan -= pos
            self._pos = 0

# -*- test-case-name: tests.test_imap_parser -*-
"""Tests for imapsync.imap._parser: framing, literals, every response kind."""

from __future__ import annotations

import hashlib
import os
import random
import re
import tempfile
from typing import List, Optional, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imapsync.imap import _parser
from imapsync.imap._parser import ResponseParser
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
    UntaggedResponse,
    VanishedResponse,
)
from imapsync.imap.spool import SpooledBody, body_digest
from imapsync.imap.uidset import UIDSet


def crlf(text: bytes) -> bytes:
    return text.replace(b"\n", b"\r\n")


def parse_all(
    data: bytes, chunk_sizes: Optional[Sequence[int]] = None, **kwargs: int
) -> List[Response]:
    """Feed ``data`` in chunks (cycling through ``chunk_sizes``), draining after each."""
    parser = ResponseParser(**kwargs)
    responses: List[Response] = []
    sizes = list(chunk_sizes or [len(data) or 1])
    pos = index = 0
    while pos < len(data):
        size = sizes[index % len(sizes)]
        index += 1
        parser.feed(data[pos : pos + size])
        pos += size
        while (response := parser.next_response()) is not None:
            responses.append(response)
    assert parser.next_response() is None
    return responses


def parse_one(line: bytes) -> Response:
    responses = parse_all(line)
    assert len(responses) == 1, responses
    return responses[0]


def code(line: bytes) -> Optional[ResponseCode]:
    response = parse_one(b"A1 OK " + line + b" done\r\n")
    assert isinstance(response, TaggedResponse)
    return response.code


BODY = b"From: a@example.com\r\n\r\nline ) with \x00 NUL \xff\r\n{5}\r\n* 2 FETCH ()\r\n"

TRANSCRIPT = crlf(
    b"* OK [CAPABILITY IMAP4rev1 LITERAL+ ENABLE QRESYNC] Dovecot ready.\n"
    b"A1 OK [CAPABILITY IMAP4rev1 QRESYNC] Logged in\n"
    b"* ENABLED QRESYNC\n"
    b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1)\n"
    b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1 \\*)] ok\n"
    b"* 172 EXISTS\n"
    b"* 0 RECENT\n"
    b"* OK [UIDVALIDITY 3857529045] UIDs valid\n"
    b"* OK [UIDNEXT 4392] Predicted next UID\n"
    b"* OK [HIGHESTMODSEQ 715194045007] Highest\n"
    b"* VANISHED (EARLIER) 41,43:116,118,120:211,214:540\n"
    b"* 49 FETCH (UID 117 FLAGS (\\Seen \\Answered) MODSEQ (90060115194045001))\n"
    b"* 50 FETCH (MODSEQ (90060115194045001) FLAGS () UID 118)\n"
    b"A2 OK [READ-WRITE] Select completed\n"
)
TRANSCRIPT += (
    b"* 51 FETCH (UID 119 RFC822.SIZE %d BODY[] {%d}\r\n%s"
    b' INTERNALDATE "17-Jul-1996 02:44:25 -0700")\r\n' % (len(BODY), len(BODY), BODY)
)
MAILBOX = b"a\r\nb {3}\r\n"
TRANSCRIPT += b'* LIST (\\HasNoChildren) "/" inbox\r\n'
TRANSCRIPT += b"* LIST (\\Noselect) NIL {%d}\r\n%s\r\n" % (len(MAILBOX), MAILBOX)
TRANSCRIPT += crlf(
    b'* LSUB () "." "Sent \\"old\\""\n'
    b"* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\n"
    b'* ESEARCH (TAG "A3") UID ALL 1:3,5 COUNT 4\n'
    b"* 3 EXPUNGE\n"
    b"A3 NO [TRYCREATE] No such mailbox\n"
    b"+ Ready for literal data\n"
    b"* BYE Logging out\n"
    b"A4 OK Logout completed\n"
)

EXPECTED: List[Response] = [
    ConditionResponse(
        b"OK",
        ResponseCode(b"CAPABILITY", (b"IMAP4REV1", b"LITERAL+", b"ENABLE", b"QRESYNC")),
        b"Dovecot ready.",
    ),
    TaggedResponse(
        b"A1", b"OK", ResponseCode(b"CAPABILITY", (b"IMAP4REV1", b"QRESYNC")), b"Logged in"
    ),
    EnabledResponse((b"QRESYNC",)),
    FlagsResponse((b"\\Answered", b"\\Flagged", b"\\Deleted", b"\\Seen", b"\\Draft", b"$Label1")),
    ConditionResponse(
        b"OK",
        ResponseCode(
            b"PERMANENTFLAGS",
            (b"\\Answered", b"\\Flagged", b"\\Deleted", b"\\Seen", b"\\Draft", b"$Label1", b"\\*"),
        ),
        b"ok",
    ),
    NumberResponse(b"EXISTS", 172),
    NumberResponse(b"RECENT", 0),
    ConditionResponse(b"OK", ResponseCode(b"UIDVALIDITY", 3857529045), b"UIDs valid"),
    ConditionResponse(b"OK", ResponseCode(b"UIDNEXT", 4392), b"Predicted next UID"),
    ConditionResponse(b"OK", ResponseCode(b"HIGHESTMODSEQ", 715194045007), b"Highest"),
    VanishedResponse(True, UIDSet.parse(b"41,43:116,118,120:211,214:540")),
    FetchResponse(49, uid=117, modseq=90060115194045001, flags=(b"\\Seen", b"\\Answered")),
    FetchResponse(50, uid=118, modseq=90060115194045001, flags=()),
    TaggedResponse(b"A2", b"OK", ResponseCode(b"READ-WRITE", None), b"Select completed"),
    FetchResponse(
        51,
        uid=119,
        size=len(BODY),
        body=BODY,
        internaldate=b"17-Jul-1996 02:44:25 -0700",
    ),
    ListResponse(b"LIST", (b"\\HasNoChildren",), b"/", b"INBOX"),
    ListResponse(b"LIST", (b"\\Noselect",), None, MAILBOX),
    ListResponse(b"LSUB", (), b".", b'Sent "old"'),
    StatusResponse(b"blurdybloop", {b"MESSAGES": 231, b"UIDNEXT": 44292}),
    ESearchResponse(b"A3", True, {b"ALL": UIDSet.parse(b"1:3,5"), b"COUNT": 4}),
    NumberResponse(b"EXPUNGE", 3),
    TaggedResponse(b"A3", b"NO", ResponseCode(b"TRYCREATE", None), b"No such mailbox"),
    ContinuationRequest(b"Ready for literal data"),
    ConditionResponse(b"BYE", None, b"Logging out"),
    TaggedResponse(b"A4", b"OK", None, b"Logout completed"),
]


class FramingTests(SynchronousTestCase):
    def test_transcript(self) -> None:
        self.assertEqual(parse_all(TRANSCRIPT), EXPECTED)

    def test_every_split_point(self) -> None:
        """Cut in two anywhere, the stream parses the same."""
        for cut in range(1, len(TRANSCRIPT)):
            parser = ResponseParser()
            responses: List[Response] = []
            for piece in (TRANSCRIPT[:cut], TRANSCRIPT[cut:]):
                parser.feed(piece)
                while (response := parser.next_response()) is not None:
                    responses.append(response)
            self.assertEqual(responses, EXPECTED, f"cut at {cut}")

    def test_byte_by_byte(self) -> None:
        self.assertEqual(parse_all(TRANSCRIPT, [1]), EXPECTED)

    @given(st.lists(st.integers(1, 300), min_size=1, max_size=20))
    def test_random_chunks(self, sizes: List[int]) -> None:
        self.assertEqual(parse_all(TRANSCRIPT, sizes), EXPECTED)

    def test_one_response_at_a_time(self) -> None:
        """Responses stay buffered until asked for: the caller can pause."""
        parser = ResponseParser()
        parser.feed(crlf(b"* 1 EXISTS\n* 2 EXISTS\n* 3 EX"))
        self.assertEqual(parser.next_response(), NumberResponse(b"EXISTS", 1))
        parser.feed(b"ISTS\r")
        self.assertEqual(parser.next_response(), NumberResponse(b"EXISTS", 2))
        self.assertIsNone(parser.next_response())
        parser.feed(b"\n")
        self.assertEqual(parser.next_response(), NumberResponse(b"EXISTS", 3))
        self.assertIsNone(parser.next_response())

    def test_waiting_for_literal(self) -> None:
        parser = ResponseParser()
        parser.feed(b"* 1 FETCH (BODY[] {10}\r\n12345")
        self.assertIsNone(parser.next_response())
        parser.feed(b"67890")
        self.assertIsNone(parser.next_response())
        parser.feed(b")\r\n")
        self.assertEqual(parser.next_response(), FetchResponse(1, body=b"1234567890"))

    def test_take_remaining(self) -> None:
        """What follows a response is handed back unparsed (STARTTLS, COMPRESS)."""
        parser = ResponseParser()
        parser.feed(b"A1 OK Begin TLS now\r\n* OK injected\r\n* 1 EX")
        self.assertEqual(
            parser.next_response(), TaggedResponse(b"A1", b"OK", None, b"Begin TLS now")
        )
        self.assertEqual(parser.take_remaining(), b"* OK injected\r\n* 1 EX")
        self.assertEqual(parser.take_remaining(), b"")
        self.assertIsNone(parser.next_response())
        parser.feed(b"* 2 EXISTS\r\n")
        self.assertEqual(parser.next_response(), NumberResponse(b"EXISTS", 2))

    def test_long_line_in_small_chunks(self) -> None:
        """Lines far beyond 16 KiB (long VANISHED lines are normal) are fine."""
        uids = UIDSet.from_iterable(range(1, 600_000, 2))
        line = b"* VANISHED " + uids.to_bytes() + b"\r\n"
        self.assertGreater(len(line), 2_000_000)
        self.assertEqual(parse_all(line, [65536]), [VanishedResponse(False, uids)])

    def test_many_lines_across_compaction(self) -> None:
        """Consumed bytes are dropped from the buffer without losing any."""
        lines = [b"* %d FETCH (UID %d FLAGS (\\Seen))\r\n" % (i, i) for i in range(1, 60_001)]
        data = b"".join(lines)
        self.assertGreater(len(data), 2 * 1024 * 1024)
        for sizes in ([len(data)], [65536], [4093, 100_000, 7]):
            responses = parse_all(data, sizes)
            self.assertEqual(len(responses), 60_000)
            self.assertEqual(responses[-1], FetchResponse(60_000, uid=60_000, flags=(b"\\Seen",)))
            self.assertEqual(
                [r.seq for r in responses if isinstance(r, FetchResponse)][:3], [1, 2, 3]
            )


class LiteralTests(SynchronousTestCase):
    def test_empty_literal(self) -> None:
        self.assertEqual(
            parse_one(b"* 1 FETCH (BODY[] {0}\r\n UID 5)\r\n"),
            FetchResponse(1, uid=5, body=b""),
        )

    def test_literal_at_end(self) -> None:
        self.assertEqual(
            parse_one(b"* 1 FETCH (UID 5 BODY[] {4}\r\nab\r\n)\r\n"),
            FetchResponse(1, uid=5, body=b"ab\r\n"),
        )

    def test_binary_literal(self) -> None:
        body = bytes(range(256)) * 3
        self.assertEqual(
            parse_one(b"* 1 FETCH (BINARY[] ~{768}\r\n" + body + b")\r\n"),
            FetchResponse(1, extra={b"BINARY[]": body}),
        )

    def test_non_synchronizing_literal(self) -> None:
        self.assertEqual(
            parse_one(b"* 1 FETCH (RFC822 {3+}\r\nabc)\r\n"), FetchResponse(1, body=b"abc")
        )

    def test_several_literals(self) -> None:
        response = parse_one(
            b"* 7 FETCH (BODY[HEADER.FIELDS (From To)] {2}\r\nh\n BODY[]<0> {3}\r\n"
            b"b\rb BODY[TEXT] {0}\r\n)\r\n"
        )
        self.assertEqual(
            response,
            FetchResponse(
                7,
                body=b"b\rb",
                extra={b"BODY[HEADER.FIELDS (FROM TO)]": b"h\n", b"BODY[TEXT]": b""},
            ),
        )

    def test_literal_in_list(self) -> None:
        self.assertEqual(
            parse_one(b'* ID ("name" {7}\r\nDovecot "x" NIL)\r\n'),
            UntaggedResponse(b"ID", None, ([b"name", b"Dovecot", b"x", None],)),
        )

    def test_mailbox_literal(self) -> None:
        self.assertEqual(
            parse_one(b'* LIST () "/" {6}\r\nfoo\r\n \r\n'),
            ListResponse(b"LIST", (), b"/", b"foo\r\n "),
        )
        self.assertEqual(
            parse_one(b"* STATUS {5}\r\nInBoX (MESSAGES 2)\r\n"),
            StatusResponse(b"INBOX", {b"MESSAGES": 2}),
        )

    def test_big_body(self) -> None:
        """Bodies over 64 KiB, in one chunk or many, arrive whole and intact."""
        rng = random.Random(7)
        body = bytes(rng.getrandbits(8) for _ in range(300_000)) + b"\r\n)\r\n"
        data = b"* 3 FETCH (UID 9 BODY[] {%d}\r\n%s FLAGS (\\Seen))\r\nA1 OK done\r\n" % (
            len(body),
            body,
        )
        expected = [
            FetchResponse(3, uid=9, body=body, flags=(b"\\Seen",)),
            TaggedResponse(b"A1", b"OK", None, b"done"),
        ]
        for sizes in ([len(data)], [65536], [4096, 1, 70_000], [len(data) // 2]):
            self.assertEqual(parse_all(data, sizes), expected)

    def test_big_literal_frees_buffer(self) -> None:
        """A big literal is moved out of the receive buffer as it arrives."""
        parser = ResponseParser()
        parser.spool_at = 10**9  # held in memory, not spooled
        parser.feed(b"* 1 FETCH (BODY[] {4000000}\r\n")
        self.assertIsNone(parser.next_response())
        for _ in range(3):
            parser.feed(b"x" * 1_000_000)
            self.assertIsNone(parser.next_response())
        # Compaction keeps the buffer from growing with the literal.
        self.assertLess(len(parser._buffer), 2_100_000)
        parser.feed(b"x" * 1_000_000 + b")\r\n")
        response = parser.next_response()
        assert isinstance(response, FetchResponse)
        self.assertEqual(response.body, b"x" * 4_000_000)


class GuardTests(SynchronousTestCase):
    def test_line_limit(self) -> None:
        line = b"* OK " + b"x" * 95 + b"\r\n"
        self.assertEqual(len(parse_all(line, max_line=100)), 1)
        exc = self.assertRaises(ProtocolError, parse_all, line, max_line=99)
        self.assertIn("longer than 99 bytes", str(exc))

    def test_line_limit_before_line_ends(self) -> None:
        """An endless line fails as soon as it passes the limit."""
        parser = ResponseParser(max_line=100)
        parser.feed(b"* OK " + b"x" * 95 + b"\r")
        self.assertIsNone(parser.next_response())
        parser.feed(b"y")
        self.assertRaises(ProtocolError, parser.next_response)

    def test_line_limit_counts_segments_not_literals(self) -> None:
        data = b"* 1 FETCH (BODY[] {200}\r\n" + b"b" * 200 + b" UID 1234)\r\n"
        self.assertEqual(len(parse_all(data, max_line=40)), 1)
        self.assertRaises(ProtocolError, parse_all, data, max_line=30)

    def test_literal_limit(self) -> None:
        data = b"* 1 FETCH (BODY[] {10}\r\n0123456789)\r\n"
        self.assertEqual(len(parse_all(data, max_literal=10)), 1)
        exc = self.assertRaises(
            ProtocolError, parse_all, b"* 1 FETCH (BODY[] {11}\r\n", max_literal=10
        )
        self.assertIn("literal of 11 bytes", str(exc))

    def test_default_literal_limit(self) -> None:
        self.assertRaises(ProtocolError, parse_all, b"* 1 FETCH (BODY[] {1073741825}\r\n")
        self.assertRaises(
            ProtocolError, parse_all, b"* 1 FETCH (BODY[] {99999999999999999999}\r\n"
        )


class ResponseKindTests(SynchronousTestCase):
    def test_tagged(self) -> None:
        self.assertEqual(
            parse_one(b"a.1 ok fine\r\n"), TaggedResponse(b"a.1", b"OK", None, b"fine")
        )
        self.assertEqual(parse_one(b"A1 BAD\r\n"), TaggedResponse(b"A1", b"BAD", None, b""))
        self.assertEqual(
            parse_one(b"A1 NO [ALERT]\r\n"),
            TaggedResponse(b"A1", b"NO", ResponseCode(b"ALERT", None), b""),
        )

    def test_continuation(self) -> None:
        self.assertEqual(parse_one(b"+ idling\r\n"), ContinuationRequest(b"idling"))
        self.assertEqual(parse_one(b"+\r\n"), ContinuationRequest(b""))
        self.assertEqual(parse_one(b"+ \r\n"), ContinuationRequest(b""))
        self.assertEqual(parse_one(b"+ YmFzZTY0==\r\n"), ContinuationRequest(b"YmFzZTY0=="))

    def test_conditions(self) -> None:
        for status in (b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"):
            self.assertEqual(
                parse_one(b"* " + status.lower() + b" [ALERT] some text\r\n"),
                ConditionResponse(status, ResponseCode(b"ALERT", None), b"some text"),
            )
        self.assertEqual(parse_one(b"* OK\r\n"), ConditionResponse(b"OK", None, b""))
        self.assertEqual(
            parse_one(b"* OK [CLOSED]\r\n"), ConditionResponse(b"OK", ResponseCode(b"CLOSED"), b"")
        )

    def test_capability(self) -> None:
        self.assertEqual(
            parse_one(b"* CAPABILITY IMAP4rev1 qresync AUTH=PLAIN\r\n"),
            CapabilityResponse((b"IMAP4REV1", b"QRESYNC", b"AUTH=PLAIN")),
        )
        self.assertEqual(parse_one(b"* CAPABILITY\r\n"), CapabilityResponse(()))

    def test_enabled(self) -> None:
        self.assertEqual(
            parse_one(b"* ENABLED condstore QRESYNC\r\n"),
            EnabledResponse((b"CONDSTORE", b"QRESYNC")),
        )
        self.assertEqual(parse_one(b"* ENABLED\r\n"), EnabledResponse(()))

    def test_numbers(self) -> None:
        for name in (b"EXISTS", b"EXPUNGE", b"RECENT"):
            self.assertEqual(
                parse_one(b"* 23 " + name.lower() + b"\r\n"), NumberResponse(name, 23)
            )

    def test_flags(self) -> None:
        self.assertEqual(parse_one(b"* FLAGS ()\r\n"), FlagsResponse(()))
        self.assertEqual(
            parse_one(b"* FLAGS (\\Seen $Forwarded NIL Junk)\r\n"),
            FlagsResponse((b"\\Seen", b"$Forwarded", b"NIL", b"Junk")),
        )

    def test_fetch_items(self) -> None:
        self.assertEqual(
            parse_one(
                b'* 12 FETCH (FLAGS (\\Seen) INTERNALDATE "17-Jul-1996 02:44:25 -0700" '
                b"RFC822.SIZE 4286 UID 9 MODSEQ (12121231000) BODY[]<0> NIL)\r\n"
            ),
            FetchResponse(
                12,
                uid=9,
                modseq=12121231000,
                flags=(b"\\Seen",),
                internaldate=b"17-Jul-1996 02:44:25 -0700",
                size=4286,
                body=None,
            ),
        )

    def test_fetch_rfc822_and_partial(self) -> None:
        self.assertEqual(parse_one(b'* 1 FETCH (RFC822 "hi")\r\n'), FetchResponse(1, body=b"hi"))
        self.assertEqual(
            parse_one(b'* 1 FETCH (BODY[]<100> "hi")\r\n'),
            FetchResponse(1, extra={b"BODY[]<100>": b"hi"}),
        )

    def test_fetch_extra(self) -> None:
        response = parse_one(
            b'* 1 FETCH (ENVELOPE ("date" NIL (("A" NIL "a" "example.com")) NIL) '
            b'body[header] {2}\r\nh\n X-GM-LABELS (\\Inbox "a b"))\r\n'
        )
        self.assertEqual(
            response,
            FetchResponse(
                1,
                extra={
                    b"ENVELOPE": [b"date", None, [[b"A", None, b"a", b"example.com"]], None],
                    b"BODY[HEADER]": b"h\n",
                    b"X-GM-LABELS": [b"\\Inbox", b"a b"],
                },
            ),
        )

    def test_deep_nesting(self) -> None:
        """Nesting deeper than Python's recursion limit is parsed iteratively."""
        depth = 5000
        response = parse_one(b"* 1 FETCH (BODYSTRUCTURE " + b"(" * depth + b")" * depth + b")\r\n")
        assert isinstance(response, FetchResponse)
        value = response.extra[b"BODYSTRUCTURE"]
        for _ in range(depth - 1):
            assert isinstance(value, list)
            value = value[0]
        self.assertEqual(value, [])

    def test_vanished(self) -> None:
        self.assertEqual(
            parse_one(b"* VANISHED 300:310,405,411\r\n"),
            VanishedResponse(False, UIDSet.parse(b"300:310,405,411")),
        )
        self.assertEqual(
            parse_one(b"* VANISHED (earlier) 5\r\n"), VanishedResponse(True, UIDSet.parse(b"5"))
        )

    def test_list(self) -> None:
        self.assertEqual(
            parse_one(b'* LIST (\\HasChildren \\Marked) "." INBOX.Sent\r\n'),
            ListResponse(b"LIST", (b"\\HasChildren", b"\\Marked"), b".", b"INBOX.Sent"),
        )
        self.assertEqual(
            parse_one(b'* LIST () "\\\\" "a\\\\b"\r\n'),
            ListResponse(b"LIST", (), b"\\", b"a\\b"),
        )
        # INBOX in any case is INBOX; only the whole name.
        self.assertEqual(parse_one(b'* LIST () "/" "iNbOx"\r\n').mailbox, b"INBOX")  # type: ignore[union-attr]
        self.assertEqual(parse_one(b'* LIST () "/" inbox/sub\r\n').mailbox, b"inbox/sub")  # type: ignore[union-attr]
        # An atom NIL is a mailbox named NIL; "]" and "[" are allowed in atoms.
        self.assertEqual(
            parse_one(b"* LSUB () NIL NIL\r\n"), ListResponse(b"LSUB", (), None, b"NIL")
        )
        self.assertEqual(parse_one(b'* LIST () "/" a]b[c\r\n').mailbox, b"a]b[c")  # type: ignore[union-attr]

    def test_list_extended(self) -> None:
        self.assertEqual(
            parse_one(
                b'* LIST (\\NonExistent) "/" "Foo" '
                b'("CHILDINFO" ("SUBSCRIBED") "OLDNAME" ("Bar"))\r\n'
            ),
            ListResponse(
                b"LIST",
                (b"\\NonExistent",),
                b"/",
                b"Foo",
                {b"CHILDINFO": [b"SUBSCRIBED"], b"OLDNAME": [b"Bar"]},
            ),
        )
        response = parse_one(b'* LIST (\\Subscribed) "/" "x" (childinfo ("SUBSCRIBED"))\r\n')
        self.assertTrue(
            isinstance(response, ListResponse) and response.has_attribute(b"\\SUBSCRIBED")
        )
        self.assertEqual(response.extended, {b"CHILDINFO": [b"SUBSCRIBED"]})  # type: ignore[union-attr]

    def test_status(self) -> None:
        self.assertEqual(
            parse_one(
                b'* STATUS "Sent Items" (messages 3 UIDNEXT 44292 UIDVALIDITY 1 '
                b"HIGHESTMODSEQ 7011231777 UNSEEN 0)\r\n"
            ),
            StatusResponse(
                b"Sent Items",
                {
                    b"MESSAGES": 3,
                    b"UIDNEXT": 44292,
                    b"UIDVALIDITY": 1,
                    b"HIGHESTMODSEQ": 7011231777,
                    b"UNSEEN": 0,
                },
            ),
        )
        self.assertEqual(parse_one(b"* STATUS x ()\r\n"), StatusResponse(b"x", {}))

    def test_esearch(self) -> None:
        self.assertEqual(
            parse_one(b'* ESEARCH (TAG "A1") UID ALL 1:3,5 COUNT 4\r\n'),
            ESearchResponse(b"A1", True, {b"ALL": UIDSet.parse(b"1:3,5"), b"COUNT": 4}),
        )
        self.assertEqual(
            parse_one(b'* ESEARCH (TAG "A1") UID\r\n'), ESearchResponse(b"A1", True, {})
        )
        self.assertEqual(parse_one(b"* ESEARCH\r\n"), ESearchResponse(None, False, {}))
        self.assertEqual(
            parse_one(b"* ESEARCH min 2 MAX 9 modseq 77 PARTIAL (1:10 NIL)\r\n"),
            ESearchResponse(
                None,
                False,
                {b"MIN": 2, b"MAX": 9, b"MODSEQ": 77, b"PARTIAL": [b"1:10", None]},
            ),
        )

    def test_untagged_other(self) -> None:
        self.assertEqual(
            parse_one(b"* 3 SOMETHING else (1 2)\r\n"),
            UntaggedResponse(b"SOMETHING", 3, (b"else", [b"1", b"2"])),
        )
        self.assertEqual(
            parse_one(b'* NAMESPACE (("" "/")) NIL (("#shared/" "/"))\r\n'),
            UntaggedResponse(b"NAMESPACE", None, ([[b"", b"/"]], None, [[b"#shared/", b"/"]])),
        )
        self.assertEqual(parse_one(b"* ID NIL\r\n"), UntaggedResponse(b"ID", None, (None,)))
        self.assertEqual(
            parse_one(b"* search 2 84 882\r\n"),
            UntaggedResponse(b"SEARCH", None, (b"2", b"84", b"882")),
        )
        self.assertEqual(parse_one(b"* SEARCH \r\n"), UntaggedResponse(b"SEARCH", None, ()))


class ResponseCodeTests(SynchronousTestCase):
    def test_numbers(self) -> None:
        for name in (b"UIDVALIDITY", b"UIDNEXT", b"HIGHESTMODSEQ", b"UNSEEN"):
            self.assertEqual(code(b"[" + name.lower() + b" 42]"), ResponseCode(name, 42))

    def test_appenduid(self) -> None:
        self.assertEqual(
            code(b"[APPENDUID 38505 3955]"), ResponseCode(b"APPENDUID", (38505, (3955,)))
        )
        self.assertEqual(
            code(b"[APPENDUID 38505 3955,3960:3958]"),
            ResponseCode(b"APPENDUID", (38505, (3955, 3958, 3959, 3960))),
        )

    def test_copyuid(self) -> None:
        self.assertEqual(
            code(b"[COPYUID 38505 304,319:320 3956:3958]"),
            ResponseCode(b"COPYUID", (38505, (304, 319, 320), (3956, 3957, 3958))),
        )
        self.assertRaises(ProtocolError, code, b"[COPYUID 38505 304,319:320 3956:3957]")
        self.assertRaises(ProtocolError, code, b"[COPYUID 38505 304]")

    def test_modified(self) -> None:
        self.assertEqual(
            code(b"[MODIFIED 7,9,12:11]"), ResponseCode(b"MODIFIED", UIDSet.parse(b"7,9,11:12"))
        )

    def test_capability(self) -> None:
        self.assertEqual(
            code(b"[CAPABILITY IMAP4rev1 Literal+]"),
            ResponseCode(b"CAPABILITY", (b"IMAP4REV1", b"LITERAL+")),
        )

    def test_permanentflags(self) -> None:
        self.assertEqual(
            code(b"[PERMANENTFLAGS (\\Deleted \\Seen $Junk \\*)]"),
            ResponseCode(b"PERMANENTFLAGS", (b"\\Deleted", b"\\Seen", b"$Junk", b"\\*")),
        )
        self.assertEqual(code(b"[PERMANENTFLAGS ()]"), ResponseCode(b"PERMANENTFLAGS", ()))

    def test_badcharset(self) -> None:
        self.assertEqual(code(b"[BADCHARSET]"), ResponseCode(b"BADCHARSET", ()))
        self.assertEqual(
            code(b'[BADCHARSET (UTF-8 "US-ASCII")]'),
            ResponseCode(b"BADCHARSET", (b"UTF-8", b"US-ASCII")),
        )

    def test_no_argument(self) -> None:
        for name in (
            b"CLOSED",
            b"NOMODSEQ",
            b"UIDNOTSTICKY",
            b"NOTIFICATIONOVERFLOW",
            b"BADEVENT",
            b"ALERT",
            b"TRYCREATE",
            b"READ-ONLY",
            b"READ-WRITE",
            b"PARSE",
        ):
            self.assertEqual(code(b"[" + name + b"]"), ResponseCode(name, None))

    def test_unknown(self) -> None:
        self.assertEqual(code(b"[X-FOO]"), ResponseCode(b"X-FOO", None))
        self.assertEqual(
            code(b"[REFERRAL imap://user;AUTH=*@SERVER2/SHARED/FOO]"),
            ResponseCode(b"REFERRAL", b"imap://user;AUTH=*@SERVER2/SHARED/FOO"),
        )
        self.assertEqual(
            code(b"[BADEVENT (MessageNew MessageExpunge)]"),
            ResponseCode(b"BADEVENT", b"(MessageNew MessageExpunge)"),
        )

    def test_text_after_code(self) -> None:
        response = parse_one(b"* NO [ALERT]no space\r\n")
        self.assertEqual(response, ConditionResponse(b"NO", ResponseCode(b"ALERT"), b"no space"))


def lower_items(line: bytes) -> bytes:
    """The same FETCH line with item names lower-cased: off the fast path."""
    for name in (b"FETCH", b"UID", b"MODSEQ", b"FLAGS"):
        line = line.replace(name + b" ", name.lower() + b" ")
    return line


flag_names = st.sampled_from(
    [b"\\Seen", b"\\Answered", b"$Label1", b"Junk", b"\\*", b"a]b", b"x%"]
)


@st.composite
def fetch_lines(draw: st.DrawFn) -> bytes:
    items = []
    if draw(st.booleans()):
        items.append(b"UID %d" % draw(st.integers(1, 2**32 - 1)))
    if draw(st.booleans()):
        items.append(b"MODSEQ (%d)" % draw(st.integers(0, 2**63 - 1)))
    if draw(st.booleans()) or not items:
        items.append(b"FLAGS (%s)" % b" ".join(draw(st.lists(flag_names, max_size=4))))
    items = draw(st.permutations(items))
    seq = draw(st.integers(1, 10**6))
    return b"* %d FETCH (%s)\r\n" % (seq, b" ".join(items))


class FastPathTests(SynchronousTestCase):
    def test_any_order(self) -> None:
        expected = FetchResponse(3, uid=4, modseq=5, flags=(b"\\Seen", b"$Label1"))
        for line in [
            b"* 3 FETCH (UID 4 MODSEQ (5) FLAGS (\\Seen $Label1))\r\n",
            b"* 3 FETCH (FLAGS (\\Seen $Label1) UID 4 MODSEQ (5))\r\n",
            b"* 3 FETCH (MODSEQ (5) FLAGS (\\Seen $Label1) UID 4)\r\n",
        ]:
            self.assertEqual(parse_one(line), expected)
            self.assertEqual(parse_one(lower_items(line)), expected)

    @given(fetch_lines())
    def test_same_as_generic(self, line: bytes) -> None:
        self.assertEqual(parse_one(line), parse_one(lower_items(line)))

    def test_malformed_fast_shapes(self) -> None:
        for line in [
            b"* 3 FETCH (UID 4 )\r\n",
            b"* 3 FETCH (UID 4  FLAGS ())\r\n",
            b"* 3 FETCH (FLAGS (a  b))\r\n",
            b"* 3 FETCH (FLAGS ( a))\r\n",
            b"* 3 FETCH (UID x)\r\n",
            b"* 3 FETCH (MODSEQ 5)\r\n",
            b"* 3 FETCH ()\r\n",
            b"* 3 FETCH (UID 4) \r\n",
        ]:
            with self.subTest(line=line):
                self.assertRaises(ProtocolError, parse_all, line)


MALFORMED = [
    b"\r\n",
    b"*\r\n",
    b"* \r\n",
    b"A1\r\n",
    b"A1 \r\n",
    b"A1 MAYBE fine\r\n",
    b"A1 PREAUTH x\r\n",
    b"(A1 OK x\r\n",
    b"* 5\r\n",
    b"* 5 EXISTS now\r\n",
    b"* 99999999999999999999999 EXISTS\r\n",
    b"* OK [UIDVALIDITY abc] x\r\n",
    b"* OK [UIDVALIDITY] x\r\n",
    b"* OK [UIDNEXT 1\r\n",
    b"* OK [] x\r\n",
    b"* OK [APPENDUID 1] x\r\n",
    b"* OK [APPENDUID x 1] x\r\n",
    b"* OK [MODIFIED 0] x\r\n",
    b"* OK [PERMANENTFLAGS \\Seen] x\r\n",
    b"* OK [PERMANENTFLAGS (\\Seen] x\r\n",
    b"* OK [BADCHARSET (a (b))] x\r\n",
    b"* OK text {3}\r\nabc\r\n",
    b"* FLAGS\r\n",
    b"* FLAGS (\\Seen\r\n",
    b"* FLAGS (\\Seen) x\r\n",
    b'* FLAGS ("a")\r\n',
    b"* LIST () \r\n",
    b'* LIST () "//" x\r\n',
    b'* LIST () ("/") x\r\n',
    b'* LIST () "/"\r\n',
    b'* LIST () "/" x ("CHILDINFO")\r\n',
    b'* LIST () "/" x y\r\n',
    b'* LIST () "/" (x)\r\n',
    b"* STATUS x (MESSAGES)\r\n",
    b"* STATUS x (MESSAGES y)\r\n",
    b"* STATUS x MESSAGES 1\r\n",
    b"* ESEARCH (TAG) ALL 1\r\n",
    b"* ESEARCH ALL\r\n",
    b"* ESEARCH ALL 1:*\r\n",
    b"* ESEARCH COUNT x\r\n",
    b"* VANISHED\r\n",
    b"* VANISHED (LATER) 1\r\n",
    b"* VANISHED 1:*\r\n",
    b"* VANISHED (EARLIER)\r\n",
    b"* 1 FETCH UID 1\r\n",
    b"* 1 FETCH (UID)\r\n",
    b"* 1 FETCH (UID 1\r\n",
    b"* 1 FETCH (UID 1))\r\n",
    b"* 1 FETCH (MODSEQ (1 2))\r\n",
    b"* 1 FETCH (FLAGS \\Seen)\r\n",
    b"* 1 FETCH (BODY[] (a))\r\n",
    b"* 1 FETCH (INTERNALDATE NIL)\r\n",
    b"* 1 FETCH (BODY[] {3}x\r\n",
    b'* 1 FETCH (BODY[] "a\\b")\r\n',
    b'* 1 FETCH (BODY[] "abc)\r\n',
    b"* 1 FETCH (BODY[HEADER x)\r\n",
    b"* 1 FETCH (X {3}\r\nabc\r\n",
    b"* 1 FETCH (X {3}\r\nabc Y)\r\n",
    b"* X (a b\r\n",
    b"* X a)\r\n",
    b"* X (a  b)\r\n",
    b"* X ( a)\r\n",
    b"* X a{3}\r\nabc\r\n",
    b"* X \x00\r\n",
    b"+ x {3}\r\nabc\r\n",
]


class MalformedTests(SynchronousTestCase):
    def test_malformed(self) -> None:
        for data in MALFORMED:
            with self.subTest(data=data):
                self.assertRaises(ProtocolError, parse_all, data)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        self._only_protocol_errors(data)

    @settings(max_examples=500, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                [
                    b"* ",
                    b"A1 ",
                    b"+ ",
                    b"OK ",
                    b"NO ",
                    b"FETCH ",
                    b"LIST ",
                    b"STATUS ",
                    b"ESEARCH ",
                ]
                + [b"VANISHED ", b"FLAGS ", b"UID ", b"MODSEQ ", b"BODY[] ", b"BODY[", b"]"]
                + [b"(", b")", b"[", b'"', b"\\", b"{", b"}", b"~", b"{3}\r\n", b"{0}\r\n"]
                + [b"NIL", b" ", b"1", b"0", b"12", b"1:3", b",", b"x", b"\r\n", b"\r", b"\n"]
                + [b"[UIDNEXT ", b"[COPYUID ", b"[APPENDUID ", b"[MODIFIED ", b"[BADCHARSET "]
                + [b"[PERMANENTFLAGS ", b"[CAPABILITY ", b"TAG ", b"EARLIER", b"ALL ", b"\xff"]
            ),
            max_size=40,
        )
    )
    def test_imap_like_noise(self, pieces: List[bytes]) -> None:
        self._only_protocol_errors(b"".join(pieces) + b"\r\n")

    def _only_protocol_errors(self, data: bytes) -> None:
        try:
            whole = parse_all(data)
        except ProtocolError:
            return
        # Whatever parses must parse alike in small chunks.
        self.assertEqual(parse_all(data, [3]), whole)


class SpoolTests(SynchronousTestCase):
    """Message bodies from `ResponseParser.spool_at` bytes on go to a file."""

    def feed_body(self, parser: ResponseParser, body: bytes, chunk: int) -> FetchResponse:
        data = b"* 1 FETCH (UID 7 BODY[] {%d}\r\n%s FLAGS (\\Seen))\r\n" % (len(body), body)
        response = None
        for start in range(0, len(data), chunk):
            parser.feed(data[start : start + chunk])
            response = parser.next_response() or response
        assert isinstance(response, FetchResponse)
        return response

    def test_large_body_is_spooled(self) -> None:
        parser = ResponseParser()
        parser.spool_at = 1000
        body = bytes(range(256)) * 40
        response = self.feed_body(parser, body, 333)
        assert isinstance(response.body, SpooledBody)
        self.assertEqual(len(response.body), len(body))
        self.assertEqual(response.body.getvalue(), body)
        self.assertEqual(response.body.read(10, 5), body[10:15])
        self.assertEqual(body_digest(response.body), hashlib.sha256(body).digest())
        self.assertEqual(response.flags, (b"\\Seen",))
        self.assertEqual(response.uid, 7)

    def test_small_body_stays_bytes(self) -> None:
        parser = ResponseParser()
        parser.spool_at = 1000
        response = self.feed_body(parser, b"x" * 999, 100)
        self.assertEqual(response.body, b"x" * 999)

    def test_spooled_literal_elsewhere_is_refused(self) -> None:
        """Only a message body may be that large: a mailbox name may not."""
        parser = ResponseParser()
        parser.spool_at = 1000
        parser.feed(b'* LIST () "/" {2000}\r\n' + b"a" * 2000 + b"\r\n")
        exc = self.assertRaises(ProtocolError, parser.next_response)
        self.assertIn("literal of 2000 bytes", str(exc))

    def test_unwritable_spool_directory(self) -> None:
        """No room for the spool file: one clear error, not a traceback."""
        parser = ResponseParser()
        parser.spool_at = 1000
        missing = os.path.join(tempfile.mkdtemp(), "gone")
        self.patch(tempfile, "tempdir", missing)
        parser.feed(b"* 1 FETCH (BODY[] {2000}\r\n")
        exc = self.assertRaises(ProtocolError, parser.next_response)
        self.assertIn("cannot keep a message of 2000 bytes in a temporary file", str(exc))
        self.assertIn("TMPDIR", str(exc))


class FastBodyTests(SynchronousTestCase):
    """FETCH responses carrying a body parse the same with or without the fast path."""

    LINES = [
        b'* 3 FETCH (UID 7 MODSEQ (12) FLAGS (\\Seen $Label1) INTERNALDATE "01-Jan-2020 10:00:00 +0100" BODY[] {5}\r\nhello)\r\n',
        b'* 3 FETCH (FLAGS () UID 7 INTERNALDATE " 1-Jan-2020 10:00:00 -0000" MODSEQ (1) BODY[] {0}\r\n)\r\n',
        b"* 9 FETCH (UID 70 RFC822 {3}\r\nabc)\r\n",
        b'* 9 FETCH (UID 70 INTERNALDATE "a \\" quote" BODY[] {3}\r\nabc)\r\n',
        b"* 9 FETCH (UID 70 BODY[] {3}\r\nabc FLAGS (\\Seen))\r\n",
        b"* 9 FETCH (UID 70 BODY[]<0> {3}\r\nabc)\r\n",
    ]

    def test_same_as_generic(self) -> None:
        never = re.compile(rb"(?!)")
        for line in self.LINES:
            fast = parse_all(line)
            self.patch(_parser, "_FAST_BODY", never)
            generic = parse_all(line)
            self.patch(_parser, "_FAST_BODY", _parser._FAST_BODY)
            self.assertEqual(fast, generic, line)
            # And split anywhere.
            self.assertEqual(parse_all(line, [1]), generic, line)

    def test_taken_for_the_common_shape(self) -> None:
        calls: List[bytes] = []
        real = _parser._FAST_BODY

        class Spy:
            def fullmatch(self, data: bytes) -> Optional[re.Match[bytes]]:
                match = real.fullmatch(data)
                if match is not None:
                    calls.append(data)
                return match

        self.patch(_parser, "_FAST_BODY", Spy())
        (response,) = parse_all(self.LINES[0])
        assert isinstance(response, FetchResponse)
        self.assertEqual(len(calls), 1)
        self.assertEqual(response.body, b"hello")
        self.assertEqual(response.internaldate, b"01-Jan-2020 10:00:00 +0100")
        self.assertEqual(response.flags, (b"\\Seen", b"$Label1"))
        self.assertEqual((response.seq, response.uid, response.modseq), (3, 7, 12))

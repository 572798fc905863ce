"""Byte-exact tests of the wire protocol and the session API on StringTransport."""

from __future__ import annotations

import base64
import zlib
from typing import List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from imapsync.imap import _protocol
from imapsync.imap._protocol import Command, IMAP4ClientProtocol, Literal
from imapsync.imap.errors import (
    AuthenticationError,
    BadResponse,
    ByeResponse,
    CommandTimeoutError,
    ConnectionLostError,
    NoResponse,
    ProtocolError,
)
from imapsync.imap.response import ConditionResponse, ListResponse, StatusResponse
from imapsync.imap.session import AppendMessage, FetchedMessage, IMAPSession, notify_spec
from imapsync.imap.spool import SpooledBody
from imapsync.imap.uidset import UIDSet

CAPS = (
    b"IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE AUTH=PLAIN UIDPLUS MULTIAPPEND "
    b"CONDSTORE QRESYNC LIST-EXTENDED LIST-STATUS ESEARCH NOTIFY UNSELECT COMPRESS=DEFLATE"
)


def connect(
    capabilities: bytes = CAPS, window: int = 64, debug: int = 0
) -> Tuple[IMAP4ClientProtocol, StringTransport, Clock, IMAPSession]:
    clock = Clock()
    protocol = IMAP4ClientProtocol(clock, window=window, timeout=30, debug=debug)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"* OK [CAPABILITY " + capabilities + b"] ready\r\n")
    return protocol, transport, clock, IMAPSession(protocol, "local")


def sent(transport: StringTransport) -> bytes:
    data = transport.value()
    transport.clear()
    return bytes(data)


class GreetingTests(SynchronousTestCase):
    def test_capabilities_from_greeting(self) -> None:
        protocol, _, _, session = connect()
        greeting = self.successResultOf(protocol.greeting)
        self.assertEqual(greeting.status, b"OK")
        self.assertTrue(session.has_capability(b"QRESYNC"))
        self.assertTrue(session.has_capability(b"qresync"))

    def test_bye_greeting_fails(self) -> None:
        protocol = IMAP4ClientProtocol(Clock())
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"* BYE too many connections\r\n")
        failure = self.failureResultOf(protocol.greeting, ByeResponse)
        self.assertIn("too many connections", str(failure.value))

    def test_response_before_greeting(self) -> None:
        protocol = IMAP4ClientProtocol(Clock())
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"1 OK hello\r\n")
        self.failureResultOf(protocol.greeting, ProtocolError)
        self.assertTrue(transport.disconnecting)


class PipeliningTests(SynchronousTestCase):
    def test_commands_are_pipelined_in_order(self) -> None:
        protocol, transport, _, session = connect()
        d1 = session.noop()
        d2 = session.create(b"Work")
        d3 = session.subscribe(b"Work")
        self.assertEqual(sent(transport), b"1 NOOP\r\n2 CREATE Work\r\n3 SUBSCRIBE Work\r\n")
        protocol.dataReceived(b"1 OK\r\n2 OK\r\n3 NO [ALREADYEXISTS] nope\r\n")
        self.successResultOf(d1)
        self.successResultOf(d2)
        failure = self.failureResultOf(d3, NoResponse)
        self.assertEqual(failure.value.text, "nope")

    def test_window_limits_inflight_commands(self) -> None:
        protocol, transport, _, session = connect(window=2)
        for _ in range(4):
            session.noop()
        self.assertEqual(sent(transport), b"1 NOOP\r\n2 NOOP\r\n")
        protocol.dataReceived(b"1 OK\r\n")
        self.assertEqual(sent(transport), b"3 NOOP\r\n")
        protocol.dataReceived(b"2 OK\r\n3 OK\r\n")
        self.assertEqual(sent(transport), b"4 NOOP\r\n")

    def test_barrier_waits_for_inflight_and_blocks_later(self) -> None:
        protocol, transport, _, session = connect()
        session.noop()
        selected = session.select_qresync(b"INBOX")
        session.noop()
        self.assertEqual(sent(transport), b"1 NOOP\r\n")
        protocol.dataReceived(b"1 OK\r\n")
        self.assertEqual(sent(transport), b"2 SELECT INBOX (CONDSTORE)\r\n")
        protocol.dataReceived(
            b"* 3 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\n* OK [UIDNEXT 4] x\r\n"
            b"* OK [HIGHESTMODSEQ 9] x\r\n2 OK [READ-WRITE] done\r\n"
        )
        self.assertEqual(sent(transport), b"3 NOOP\r\n")
        result = self.successResultOf(selected)
        self.assertEqual(
            (result.uidvalidity, result.uidnext, result.highestmodseq, result.exists),
            (7, 4, 9, 3),
        )

    def test_untagged_routed_to_oldest_collector(self) -> None:
        protocol, transport, _, session = connect()
        listed = session.list_extended(status=())
        status = session.status(b"INBOX", [b"UIDNEXT"])
        self.assertEqual(
            sent(transport),
            b'1 LIST "" "*" RETURN (SUBSCRIBED)\r\n2 STATUS INBOX (UIDNEXT)\r\n',
        )
        protocol.dataReceived(
            b'* LIST (\\Subscribed) "/" INBOX\r\n* LIST () "/" "a b"\r\n1 OK\r\n'
            b"* STATUS INBOX (UIDNEXT 5)\r\n2 OK\r\n"
        )
        mailboxes = self.successResultOf(listed)
        self.assertEqual(
            [(m.name, m.subscribed) for m in mailboxes], [(b"INBOX", True), (b"a b", False)]
        )
        self.assertEqual(self.successResultOf(status), {b"UIDNEXT": 5})

    def test_unsolicited_data_goes_to_observers(self) -> None:
        protocol, _, _, session = connect()
        seen: List[object] = []
        session.add_observer(seen.append)
        protocol.dataReceived(
            b'* STATUS Sent (UIDNEXT 9 MESSAGES 3)\r\n* LIST () "/" New\r\n'
            b"* OK [NOTIFICATIONOVERFLOW] too much\r\n"
        )
        self.assertIsInstance(seen[0], StatusResponse)
        self.assertIsInstance(seen[1], ListResponse)
        self.assertIsInstance(seen[2], ConditionResponse)
        self.assertEqual(protocol.status_cache[b"Sent"][b"UIDNEXT"], 9)

    def test_list_extended_with_status_and_selection(self) -> None:
        protocol, transport, _, session = connect()
        d = session.list_extended(patterns=[b"INBOX", b"Work/*"], selection=[b"SUBSCRIBED"])
        self.assertEqual(
            sent(transport),
            b'1 LIST (SUBSCRIBED) "" ("INBOX" "Work/*") RETURN (SUBSCRIBED STATUS '
            b"(UIDVALIDITY UIDNEXT HIGHESTMODSEQ))\r\n",
        )
        protocol.dataReceived(
            b'* LIST (\\Subscribed \\HasNoChildren) "/" INBOX\r\n'
            b"* STATUS INBOX (UIDVALIDITY 1 UIDNEXT 2 HIGHESTMODSEQ 3)\r\n"
            b'* LIST (\\Subscribed \\Noselect) "/" Work\r\n1 OK\r\n'
        )
        inbox, work = self.successResultOf(d)
        self.assertEqual(inbox.status, {b"UIDVALIDITY": 1, b"UIDNEXT": 2, b"HIGHESTMODSEQ": 3})
        self.assertTrue(inbox.selectable)
        self.assertFalse(work.selectable)
        self.assertIsNone(work.status)


class LiteralTests(SynchronousTestCase):
    def test_synchronizing_literal_waits_for_continuation(self) -> None:
        protocol, transport, _, session = connect(capabilities=b"IMAP4rev1 UIDPLUS")
        d = session.append(b"INBOX", [AppendMessage(b"Hello", (b"\\Seen",))])
        session.noop()
        self.assertEqual(sent(transport), b"1 APPEND INBOX (\\Seen) {5}\r\n")
        protocol.dataReceived(b"+ go ahead\r\n")
        self.assertEqual(sent(transport), b"Hello\r\n")
        protocol.dataReceived(b"1 OK [APPENDUID 3 8] done\r\n")
        self.assertEqual(sent(transport), b"2 NOOP\r\n")
        result = self.successResultOf(d)
        self.assertEqual((result.uidvalidity, result.uids), (3, (8,)))

    def test_literal_refused_instead_of_continuation(self) -> None:
        protocol, transport, _, session = connect(capabilities=b"IMAP4rev1 UIDPLUS")
        d = session.append(b"INBOX", [AppendMessage(b"Hello")])
        session.noop()
        self.assertEqual(sent(transport), b"1 APPEND INBOX () {5}\r\n")
        protocol.dataReceived(b"1 NO [OVERQUOTA] too big\r\n")
        self.failureResultOf(d, NoResponse)
        self.assertEqual(sent(transport), b"2 NOOP\r\n")

    def test_literal_plus_multiappend(self) -> None:
        protocol, transport, _, session = connect()
        d = session.append(
            b"Sent Items",
            [
                AppendMessage(b"one\r\n", (b"\\Seen", b"\\Recent"), b"01-Jan-2020 10:00:00 +0000"),
                AppendMessage(b"two", (b"$Label1",)),
            ],
        )
        self.assertEqual(
            sent(transport),
            b'1 APPEND "Sent Items" (\\Seen) "01-Jan-2020 10:00:00 +0000" {5+}\r\none\r\n'
            b" ($Label1) {3+}\r\ntwo\r\n",
        )
        protocol.dataReceived(b"1 OK [APPENDUID 9 20:21] done\r\n")
        self.assertEqual(self.successResultOf(d).uids, (20, 21))

    def test_appenduid_count_mismatch_is_an_error(self) -> None:
        protocol, _, _, session = connect()
        d = session.append(b"INBOX", [AppendMessage(b"a"), AppendMessage(b"b")])
        protocol.dataReceived(b"1 OK [APPENDUID 9 20] done\r\n")
        self.failureResultOf(d, ProtocolError)

    def test_mailbox_names_are_encoded(self) -> None:
        _, transport, _, session = connect()
        session.create(b'quote" and \\back')
        session.create(b"caf&AOk-")
        session.create(b"")
        self.assertEqual(
            sent(transport),
            b'1 CREATE "quote\\" and \\\\back"\r\n2 CREATE caf&AOk-\r\n3 CREATE ""\r\n',
        )


class SelectedMailboxTests(SynchronousTestCase):
    def select(self) -> Tuple[IMAP4ClientProtocol, StringTransport, IMAPSession]:
        protocol, transport, _, session = connect()
        d = session.select_qresync(b"INBOX", 7, 100, UIDSet.parse(b"1:10"))
        self.assertEqual(sent(transport), b"1 SELECT INBOX (QRESYNC (7 100 1:10))\r\n")
        protocol.dataReceived(
            b"* OK [CLOSED] previous\r\n* 8 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\n"
            b"* OK [UIDNEXT 12] x\r\n* OK [HIGHESTMODSEQ 120] x\r\n"
            b"* VANISHED (EARLIER) 3:4,9\r\n"
            b"* 1 FETCH (UID 1 FLAGS (\\Seen) MODSEQ (110))\r\n"
            b"* 5 FETCH (UID 6 MODSEQ (115) FLAGS ())\r\n"
            b"1 OK [READ-WRITE] selected\r\n"
        )
        result = self.successResultOf(d)
        self.assertEqual(list(result.vanished), [3, 4, 9])
        self.assertEqual(result.changes, {1: (110, (b"\\Seen",)), 6: (115, ())})
        self.assertEqual(result.highestmodseq, 120)
        return protocol, transport, session

    def test_select_qresync_reports_changes(self) -> None:
        self.select()

    def test_unsolicited_changes_accumulate(self) -> None:
        protocol, _, session = self.select()
        self.assertEqual(list(session.take_changes().vanished), [])
        protocol.dataReceived(
            b"* 2 FETCH (UID 2 MODSEQ (121) FLAGS (\\Flagged))\r\n* VANISHED 11\r\n"
        )
        changes = session.take_changes()
        self.assertEqual(list(changes.vanished), [11])
        self.assertEqual(changes.changes, {2: (121, (b"\\Flagged",))})
        self.assertEqual(session.selected.highestmodseq, 121)
        self.assertEqual(session.take_changes().changes, {})

    def test_store_unchangedsince_and_modified(self) -> None:
        protocol, transport, session = self.select()
        d = session.uid_store(UIDSet.parse(b"1:2,6"), [b"\\Seen"], b"+", unchangedsince=120)
        self.assertEqual(
            sent(transport),
            b"2 UID STORE 1:2,6 (UNCHANGEDSINCE 120) +FLAGS.SILENT (\\Seen)\r\n",
        )
        protocol.dataReceived(
            b"* 1 FETCH (UID 1 MODSEQ (122))\r\n* 2 FETCH (UID 2 MODSEQ (123) FLAGS (\\Seen))\r\n"
            b"2 OK [MODIFIED 6] conditional store failed\r\n"
        )
        result = self.successResultOf(d)
        self.assertEqual(list(result.modified), [6])
        self.assertEqual(result.modseqs, {1: 122, 2: 123})
        self.assertEqual(result.flags, {2: (b"\\Seen",)})

    def test_expunge_returns_vanished(self) -> None:
        protocol, transport, session = self.select()
        d = session.uid_expunge(UIDSet.parse(b"5,7"))
        self.assertEqual(sent(transport), b"2 UID EXPUNGE 5,7\r\n")
        protocol.dataReceived(b"* VANISHED 5,7\r\n2 OK [HIGHESTMODSEQ 130] done\r\n")
        self.assertEqual(list(self.successResultOf(d)), [5, 7])
        self.assertEqual(session.selected.highestmodseq, 130)

    def test_fetch_changes(self) -> None:
        protocol, transport, session = self.select()
        d = session.fetch_changes(120, UIDSet.parse(b"1:11"))
        self.assertEqual(
            sent(transport),
            b"2 UID FETCH 1:11 (UID MODSEQ FLAGS) (CHANGEDSINCE 120 VANISHED)\r\n",
        )
        protocol.dataReceived(
            b"* VANISHED (EARLIER) 2\r\n* 3 FETCH (UID 5 MODSEQ (125) FLAGS ($X))\r\n2 OK\r\n"
        )
        changes = self.successResultOf(d)
        self.assertEqual(list(changes.vanished), [2])
        self.assertEqual(changes.changes, {5: (125, (b"$X",))})
        # Solicited data is not reported again as unsolicited.
        self.assertEqual(session.take_changes().changes, {})

    def test_failed_select_leaves_nothing_selected(self) -> None:
        protocol, _, session = self.select()
        d = session.select_qresync(b"Gone")
        protocol.dataReceived(b"2 NO [NONEXISTENT] no such mailbox\r\n")
        self.failureResultOf(d, NoResponse)
        self.assertIsNone(session.selected)


class FetchStreamingTests(SynchronousTestCase):
    def test_backpressure_pauses_reading(self) -> None:
        protocol, transport, _, session = connect()
        received: List[FetchedMessage] = []
        gate: List[Deferred[None]] = []

        def sink(message: FetchedMessage) -> Optional[Deferred[None]]:
            received.append(message)
            gate.append(Deferred())
            return gate[-1]

        d = session.fetch_messages(UIDSet.parse(b"1:2"), sink)
        self.assertEqual(
            sent(transport), b"1 UID FETCH 1:2 (UID FLAGS INTERNALDATE BODY.PEEK[])\r\n"
        )
        protocol.dataReceived(
            b'* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) INTERNALDATE "01-Jan-2020 10:00:00 +0000" '
            b"BODY[] {4}\r\nabcd)\r\n"
            b'* 2 FETCH (UID 2 FLAGS () INTERNALDATE "02-Jan-2020 10:00:00 +0000" '
            b"BODY[] {2}\r\nxy)\r\n"
            b"1 OK done\r\n"
        )
        self.assertEqual(len(received), 1)
        self.assertEqual(transport.producerState, "paused")
        self.assertNoResult(d)
        gate[0].callback(None)
        self.assertEqual(len(received), 2)
        self.assertNoResult(d)
        gate[1].callback(None)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(received[0].flags, (b"\\Seen",))
        self.assertEqual(received[0].body, b"abcd")
        self.assertEqual(received[1].internaldate, b"02-Jan-2020 10:00:00 +0000")

    def test_sink_failure_fails_the_fetch(self) -> None:
        protocol, _, _, session = connect()

        def sink(message: FetchedMessage) -> None:
            raise ValueError("disk full")

        d = session.fetch_messages(UIDSet.parse(b"1"), sink)
        protocol.dataReceived(b"* 1 FETCH (UID 1 FLAGS () BODY[] {1}\r\nx)\r\n1 OK\r\n")
        self.failureResultOf(d, ValueError)

    def test_long_uid_sets_are_split(self) -> None:
        protocol, transport, _, session = connect()
        uids = UIDSet.from_iterable(range(1, 20000, 2))
        d = session.fetch_flags(uids)
        lines = sent(transport).split(b"\r\n")[:-1]
        self.assertGreater(len(lines), 1)
        for line in lines:
            self.assertLess(len(line), 8300)
        protocol.dataReceived(b"".join(b"%d OK\r\n" % (i + 1) for i in range(len(lines))))
        self.assertEqual(self.successResultOf(d), {})


class FailureTests(SynchronousTestCase):
    def test_timeout_fails_pending_and_aborts(self) -> None:
        protocol, transport, clock, session = connect()
        d = session.noop()
        clock.advance(29)
        self.assertNoResult(d)
        protocol.dataReceived(b"* OK still there\r\n")
        clock.advance(29)
        self.assertNoResult(d)
        clock.advance(2)
        self.failureResultOf(d, CommandTimeoutError)
        self.assertTrue(transport.disconnected)

    def test_idle_connection_has_no_timeout(self) -> None:
        protocol, transport, clock, session = connect()
        clock.advance(3600)
        self.assertFalse(transport.disconnected)

    def test_connection_lost_fails_every_pending_command(self) -> None:
        protocol, _, _, session = connect(window=1)
        d1 = session.noop()
        d2 = session.noop()
        lost = session.when_lost()
        protocol.connectionLost(Failure(ConnectionLostError("cut")))
        self.failureResultOf(d1, ConnectionLostError)
        self.failureResultOf(d2, ConnectionLostError)
        self.successResultOf(lost)
        self.failureResultOf(session.noop(), ConnectionLostError)

    def test_bye_then_close_reports_bye(self) -> None:
        from twisted.internet.error import ConnectionDone

        protocol, _, _, session = connect()
        d = session.noop()
        protocol.dataReceived(b"* BYE shutting down\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        failure = self.failureResultOf(d, ByeResponse)
        self.assertIn("shutting down", str(failure.value))

    def test_bad_response(self) -> None:
        protocol, _, _, session = connect()
        d = session.noop()
        protocol.dataReceived(b"1 BAD [CLIENTBUG] what\r\n")
        self.failureResultOf(d, BadResponse)

    def test_unknown_tag_is_a_protocol_error(self) -> None:
        protocol, transport, _, session = connect()
        d = session.noop()
        protocol.dataReceived(b"99 OK\r\n")
        self.failureResultOf(d, ProtocolError)
        self.assertTrue(transport.disconnected)

    def test_malformed_response_fails_everything(self) -> None:
        protocol, transport, _, session = connect()
        d = session.noop()
        protocol.dataReceived(b"* LIST (\\Noselect\r\n")
        self.failureResultOf(d, ProtocolError)
        self.assertTrue(transport.disconnected)


class StartTLSTests(SynchronousTestCase):
    def test_injection_after_starttls_ok_aborts(self) -> None:
        protocol, transport, _, session = connect(capabilities=b"IMAP4rev1 STARTTLS")
        tls: List[object] = []
        transport.startTLS = tls.append  # type: ignore[method-assign]
        d = session.starttls(object())
        self.assertEqual(sent(transport), b"1 STARTTLS\r\n")
        protocol.dataReceived(b"1 OK begin TLS\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
        failure = self.failureResultOf(d, ProtocolError)
        self.assertIn("injection", str(failure.value))
        self.assertEqual(tls, [])
        self.assertTrue(transport.disconnected)

    def test_starttls_then_capabilities_reread(self) -> None:
        protocol, transport, _, session = connect(capabilities=b"IMAP4rev1 STARTTLS LOGINDISABLED")
        tls: List[object] = []
        transport.startTLS = tls.append  # type: ignore[method-assign]
        creator = object()
        d = session.starttls(creator)
        protocol.dataReceived(b"1 OK begin TLS\r\n")
        self.assertEqual(tls, [creator])
        self.assertEqual(sent(transport), b"1 STARTTLS\r\n2 CAPABILITY\r\n")
        protocol.dataReceived(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n2 OK\r\n")
        self.successResultOf(d)
        self.assertEqual(session.capabilities, frozenset({b"IMAP4REV1", b"AUTH=PLAIN"}))

    def test_starttls_not_advertised(self) -> None:
        _, transport, _, session = connect(capabilities=b"IMAP4rev1")
        self.failureResultOf(session.starttls(object()))
        self.assertEqual(sent(transport), b"")


class CompressTests(SynchronousTestCase):
    def test_switch_with_leftover_bytes(self) -> None:
        protocol, transport, _, session = connect()
        d = session.compress()
        self.assertEqual(sent(transport), b"1 COMPRESS DEFLATE\r\n")
        server_out = zlib.compressobj(6, zlib.DEFLATED, -15)
        compressed = server_out.compress(b"* STATUS X (UIDNEXT 3)\r\n") + server_out.flush(
            zlib.Z_SYNC_FLUSH
        )
        # The first compressed bytes arrive in the same chunk as the OK.
        protocol.dataReceived(b"1 OK DEFLATE active\r\n" + compressed)
        self.successResultOf(d)
        self.assertEqual(protocol.status_cache[b"X"], {b"UIDNEXT": 3})
        noop = session.noop()
        server_in = zlib.decompressobj(-15)
        self.assertEqual(server_in.decompress(sent(transport)), b"2 NOOP\r\n")
        protocol.dataReceived(
            server_out.compress(b"2 OK\r\n") + server_out.flush(zlib.Z_SYNC_FLUSH)
        )
        self.successResultOf(noop)


class AuthenticationTests(SynchronousTestCase):
    def test_plain_with_sasl_ir(self) -> None:
        protocol, transport, _, session = connect()
        d = session.authenticate(["PLAIN", "LOGIN"], "alice", "s3cret")
        blob = base64.b64encode(b"\0alice\0s3cret")
        self.assertEqual(sent(transport), b"1 AUTHENTICATE PLAIN " + blob + b"\r\n")
        protocol.dataReceived(b"1 OK [CAPABILITY IMAP4rev1 QRESYNC] logged in\r\n")
        self.assertEqual(self.successResultOf(d), "PLAIN")

    def test_plain_without_sasl_ir(self) -> None:
        protocol, transport, _, session = connect(capabilities=b"IMAP4rev1 AUTH=PLAIN")
        d = session.authenticate(["PLAIN"], "alice", "s3cret")
        self.assertEqual(sent(transport), b"1 AUTHENTICATE PLAIN\r\n")
        protocol.dataReceived(b"+ \r\n")
        self.assertEqual(sent(transport), base64.b64encode(b"\0alice\0s3cret") + b"\r\n")
        protocol.dataReceived(b"1 OK [CAPABILITY IMAP4rev1] ok\r\n")
        self.successResultOf(d)

    def test_login_command_when_plain_not_offered(self) -> None:
        protocol, transport, _, session = connect(capabilities=b"IMAP4rev1")
        d = session.authenticate(["PLAIN", "LOGIN"], "alice", 'pa"ss')
        self.assertEqual(sent(transport), b'1 LOGIN alice "pa\\"ss"\r\n')
        protocol.dataReceived(b"1 OK [CAPABILITY IMAP4rev1] ok\r\n")
        self.assertEqual(self.successResultOf(d), "LOGIN")

    def test_logindisabled_respected(self) -> None:
        _, transport, _, session = connect(capabilities=b"IMAP4rev1 LOGINDISABLED")
        failure = self.failureResultOf(
            session.authenticate(["PLAIN", "LOGIN"], "alice", "x"), AuthenticationError
        )
        self.assertIn("LOGINDISABLED", str(failure.value))
        self.assertEqual(sent(transport), b"")

    def test_refused_login(self) -> None:
        protocol, _, _, session = connect()
        d = session.authenticate(["PLAIN"], "alice", "wrong")
        protocol.dataReceived(b"1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        failure = self.failureResultOf(d, AuthenticationError)
        self.assertIn("Authentication failed", str(failure.value))
        self.assertNotIn("wrong", str(failure.value))

    def test_credentials_not_logged_in_debug(self) -> None:
        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for level, visible in ((1, False), (2, True)):
            del events[:]
            protocol, _, _, session = connect(capabilities=b"IMAP4rev1", debug=level)
            session.authenticate(["LOGIN"], "alice", "Sup3rSecret")
            protocol.dataReceived(b"1 OK ok\r\n")
            text = " ".join(
                str(e.get("line", "")) for e in events if e.get("log_level") == LogLevel.debug
            )
            self.assertIn("LOGIN", text)
            self.assertEqual("Sup3rSecret" in text, visible)


class NotifyTests(SynchronousTestCase):
    def test_notify_set(self) -> None:
        protocol, transport, _, session = connect()
        d = session.notify_set(notify_spec())
        self.assertEqual(
            sent(transport),
            b"1 NOTIFY SET (SELECTED (MessageNew (UID MODSEQ FLAGS) MessageExpunge FlagChange)) "
            b"(PERSONAL (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange))"
            b"\r\n",
        )
        protocol.dataReceived(b"1 OK\r\n")
        self.successResultOf(d)

    def test_raw_command_parts(self) -> None:
        protocol, transport, _, _ = connect(capabilities=b"IMAP4rev1")
        d = protocol.send(Command(b"X", [b"a", Literal(b"\x00\x01", binary=True), b"b"]))
        self.assertEqual(sent(transport), b"1 X a ~{2}\r\n")
        protocol.dataReceived(b"+ ok\r\n")
        self.assertEqual(sent(transport), b"\x00\x01 b\r\n")
        protocol.dataReceived(b"1 OK\r\n")
        self.successResultOf(d)


class UnselectTests(SynchronousTestCase):
    def test_without_unselect_a_failed_examine_leaves_the_mailbox(self) -> None:
        protocol, transport, _, session = connect(capabilities=b"IMAP4rev1 CONDSTORE")
        session.select_qresync(b"INBOX")
        protocol.dataReceived(b"* OK [UIDVALIDITY 1] x\r\n1 OK selected\r\n")
        sent(transport)
        d = session.unselect()
        self.assertEqual(sent(transport), b"2 EXAMINE imapsync-no-such-mailbox-8d1c2e7b\r\n")
        protocol.dataReceived(b"2 NO [NONEXISTENT] Mailbox doesn't exist\r\n")
        self.successResultOf(d)
        self.assertIsNone(session.selected)


class UnsolicitedDuringCommandsTests(SynchronousTestCase):
    def test_fetch_for_another_uid_is_news_not_an_answer(self) -> None:
        protocol, transport, _, session = connect()
        session.select_qresync(b"INBOX")
        protocol.dataReceived(b"* OK [UIDVALIDITY 1] x\r\n* OK [HIGHESTMODSEQ 5] x\r\n1 OK\r\n")
        d = session.fetch_flags(UIDSet.parse(b"1:2"))
        protocol.dataReceived(
            b"* 1 FETCH (UID 1 MODSEQ (5) FLAGS ())\r\n"
            b"* 9 FETCH (UID 9 MODSEQ (6) FLAGS (\\Seen))\r\n2 OK\r\n"
        )
        self.assertEqual(self.successResultOf(d), {1: (5, ())})
        self.assertEqual(session.take_changes().changes, {9: (6, (b"\\Seen",))})

    def test_flags_during_a_silent_store_are_someone_elses_change(self) -> None:
        protocol, transport, _, session = connect()
        session.select_qresync(b"INBOX")
        protocol.dataReceived(b"* OK [UIDVALIDITY 1] x\r\n* OK [HIGHESTMODSEQ 5] x\r\n1 OK\r\n")
        d = session.uid_store(UIDSet.parse(b"1:2"), [b"\\Seen"], b"+", unchangedsince=5)
        protocol.dataReceived(
            b"* 1 FETCH (UID 1 MODSEQ (6))\r\n* 2 FETCH (UID 2 MODSEQ (7) FLAGS ($Other))\r\n"
            b"2 OK\r\n"
        )
        self.assertEqual(self.successResultOf(d).modseqs, {1: 6, 2: 7})
        self.assertEqual(session.take_changes().changes, {2: (7, (b"$Other",))})


def spooled(data: bytes) -> SpooledBody:
    body = SpooledBody()
    body.write(data)
    body.finish()
    return body


class PacedTransport(StringTransport):
    """A transport whose buffer is "full" after every write until `drain`."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and self.streaming:
            self.producer.pauseProducing()

    def writeSequence(self, seq: Sequence[bytes]) -> None:
        self.write(b"".join(seq))

    def drain(self) -> bytes:
        data = sent(self)
        if self.producer is not None:
            self.producer.resumeProducing()
        return data


class SpooledLiteralTests(SynchronousTestCase):
    """A spooled message body is streamed, paced by the transport."""

    def test_streamed_in_chunks_then_the_rest(self) -> None:
        self.patch(_protocol, "STREAM_CHUNK", 4)
        clock = Clock()
        protocol = IMAP4ClientProtocol(clock, timeout=30)
        transport = PacedTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"* OK [CAPABILITY " + CAPS + b"] ready\r\n")
        session = IMAPSession(protocol, "local")
        body = spooled(b"0123456789")
        appended = session.append(
            b"INBOX", [AppendMessage(body, (b"\\Seen",)), AppendMessage(b"small")]
        )
        noop = session.noop()
        # The command line and the first chunk, then one chunk per drain.
        self.assertEqual(sent(transport), b"1 APPEND INBOX (\\Seen) {10+}\r\n0123")
        self.assertIs(transport.producer, protocol._streaming)
        self.assertEqual(transport.drain(), b"")
        self.assertEqual(sent(transport), b"4567")
        # Uploading keeps the command alive past its timeout.
        clock.advance(20)
        transport.drain()
        clock.advance(20)
        self.assertEqual(sent(transport), b"89 () {5+}\r\nsmall\r\n2 NOOP\r\n")
        self.assertIsNone(transport.producer)
        self.assertNoResult(appended)
        protocol.dataReceived(b"1 OK [APPENDUID 3 8:9] done\r\n2 OK noop\r\n")
        self.assertEqual(self.successResultOf(appended).uids, (8, 9))
        self.successResultOf(noop)

    def test_connection_lost_while_streaming(self) -> None:
        self.patch(_protocol, "STREAM_CHUNK", 4)
        protocol = IMAP4ClientProtocol(Clock(), timeout=30)
        transport = PacedTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"* OK [CAPABILITY " + CAPS + b"] ready\r\n")
        session = IMAPSession(protocol, "local")
        appended = session.append(b"INBOX", [AppendMessage(spooled(b"0123456789"))])
        sent(transport)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(appended, ConnectionLostError)
        # Nothing more is written, even if the transport asks.
        transport.drain()
        self.assertEqual(sent(transport), b"")

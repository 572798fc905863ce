# -*- test-case-name: tests.test_fakeserver -*-
"""The fake IMAP server (tests/fakeserver.py) against our client, and on the wire.

The session tests mirror tests/test_imap_dovecot.py: the same calls give the
same results against the fake as against Dovecot.  The wire tests replay
exchanges recorded with Dovecot 2.3.19 (timings normalized).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from typing import Any, Dict, List, Optional, Set, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imapsync.imap._protocol import SelectedMailbox
from imapsync.imap.errors import (
    AuthenticationError,
    BadResponse,
    ByeResponse,
    CapabilityMissingError,
    CommandTimeoutError,
    ConnectionLostError,
    NoResponse,
)
from imapsync.imap.response import ListResponse, Response, StatusResponse
from imapsync.imap.session import (
    SYNC_CAPABILITIES,
    AppendMessage,
    FetchedMessage,
    IMAPSession,
    notify_spec,
)
from imapsync.imap.uidset import UIDSet
from imapsync.imap.utf7 import encode_mailbox
from imapsync.interfaces import IIMAPSession
from tests.fakeserver import (
    DEFAULT_CAPABILITIES,
    FakeIMAPServer,
    FakeNetwork,
    Fault,
    MailStore,
    MailStoreError,
    Reply,
    connect_session,
    mutf7_decode,
    mutf7_encode,
    run,
)


def body(i: int, size: int = 200) -> bytes:
    head = b"Subject: message %d\r\n\r\n" % i
    return head + (b"body of message %d " % i * (size // 20 + 1))[:size] + b"\r\n"


def _parse_date(value: Optional[bytes]) -> datetime.datetime:
    assert value is not None
    return datetime.datetime.strptime(value.decode(), "%d-%b-%Y %H:%M:%S %z")


def selected_of(session: IMAPSession) -> SelectedMailbox:
    assert session.selected is not None
    return session.selected


def without(capabilities: Tuple[bytes, ...], *names: bytes) -> Tuple[bytes, ...]:
    return tuple(c for c in capabilities if c not in names)


class FakeTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.net = FakeNetwork(self.clock)
        self.store = MailStore()

    def open(self, store: Optional[MailStore] = None, **options: Any) -> IMAPSession:
        return self.net.connect(store or self.store, **options)

    def wait(self, d: Deferred[Any]) -> Any:
        return self.net.run(d)

    def server_of(self, session: IMAPSession) -> FakeIMAPServer:
        for pump in self.net.pumps:
            if pump.client is session.protocol:
                server: FakeIMAPServer = pump.server
                return server
        raise AssertionError("no such session")


class SessionTests(FakeTestCase):
    """What tests/test_imap_dovecot.py checks against Dovecot, against the fake."""

    def test_session_provides_the_interface(self) -> None:
        session = self.open()
        self.assertTrue(verifyObject(IIMAPSession, session))

    def test_capabilities_for_sync(self) -> None:
        session = self.open()
        session.require(SYNC_CAPABILITIES)
        for capability in (b"NOTIFY", b"LITERAL+", b"MULTIAPPEND"):
            self.assertTrue(session.has_capability(capability), capability)
        enabled = self.wait(session.enable(b"QRESYNC"))
        self.assertIn(b"QRESYNC", enabled)
        server = self.wait(session.id({b"name": b"imapsync"}))
        self.assertEqual(server.get(b"name"), b"Dovecot")
        self.wait(session.noop())
        self.assertEqual(
            self.wait(session.capability()), frozenset(c.upper() for c in DEFAULT_CAPABILITIES)
        )
        self.wait(session.logout())
        self.wait(session.when_closed())

    def test_missing_qresync_is_named(self) -> None:
        caps = without(DEFAULT_CAPABILITIES, b"QRESYNC", b"CONDSTORE")
        session = self.open(capabilities=caps)
        error = self.assertRaises(CapabilityMissingError, session.require, SYNC_CAPABILITIES)
        self.assertIn("QRESYNC", str(error))
        # Not offered, so not enabled either.
        self.assertEqual(self.wait(session.enable(b"QRESYNC")), frozenset())

    def test_mailboxes(self) -> None:
        session = self.open()
        names = [
            b"Work",
            b"Work/Projects",
            b"with space",
            b'quote"back\\slash',
            encode_mailbox("Caf\u00e9/\u65e5\u672c"),
        ]
        for name in names:
            self.wait(session.create(name))
        self.wait(session.subscribe(b"Work/Projects"))
        self.wait(session.rename(b"with space", b"renamed space"))
        self.wait(session.delete(b"renamed space"))
        listed = {m.name: m for m in self.wait(session.list_extended())}
        self.assertEqual(
            set(listed),
            {
                b"INBOX",
                b"Work",
                b"Work/Projects",
                b'quote"back\\slash',
                encode_mailbox("Caf\u00e9"),
                encode_mailbox("Caf\u00e9/\u65e5\u672c"),
            },
        )
        self.assertEqual(listed[b"Work"].delimiter, b"/")
        self.assertTrue(listed[b"Work/Projects"].subscribed)
        self.assertFalse(listed[b"Work"].subscribed)
        self.assertEqual(listed[b"INBOX"].status[b"UIDNEXT"], 1)
        # A parent made by CREATE is a \Noselect level, as on Dovecot.
        self.assertFalse(listed[encode_mailbox("Caf\u00e9")].selectable)
        self.assertIsNone(listed[encode_mailbox("Caf\u00e9")].status)
        self.assertTrue(listed[b"Work"].selectable)
        subscribed = self.wait(session.list_extended(selection=[b"SUBSCRIBED"], status=()))
        self.assertEqual([m.name for m in subscribed], [b"Work/Projects"])
        status = self.wait(session.status(b"Work", [b"MESSAGES", b"UIDNEXT", b"HIGHESTMODSEQ"]))
        self.assertEqual(status, {b"MESSAGES": 0, b"UIDNEXT": 1, b"HIGHESTMODSEQ": 1})
        with self.assertRaises(NoResponse) as raised:
            self.wait(session.create(b"Work"))
        self.assertEqual(raised.exception.code.name, b"ALREADYEXISTS")

    def test_subscriptions_survive_delete_and_rename(self) -> None:
        session = self.open()
        self.wait(session.create(b"Old/Child"))
        self.wait(session.subscribe(b"Old/Child"))
        self.wait(session.rename(b"Old", b"New"))
        subscribed = self.wait(session.list_extended(selection=[b"SUBSCRIBED"], status=()))
        self.assertEqual(
            [(m.name, m.attributes) for m in subscribed],
            [(b"Old/Child", (b"\\Subscribed", b"\\NonExistent"))],
        )
        self.assertIn(b"New/Child", self.store.mailboxes)

    def test_separator_dot(self) -> None:
        store = MailStore(separator=b".")
        session = self.open(store)
        self.wait(session.create(b"Work.Projects"))
        listed = {m.name: m.delimiter for m in self.wait(session.list_extended())}
        self.assertEqual(listed[b"Work.Projects"], b".")
        self.assertIn(("Work", "Projects"), store.snapshot())

    def test_append_and_fetch_byte_identical(self) -> None:
        session = self.open()
        self.wait(session.enable(b"QRESYNC"))
        bodies = [
            body(1),
            b"Subject: 8bit\r\n\r\ncaf\xc3\xa9 \xff\xfe binary-ish \x01\x02\r\n",
            b"Subject: long\r\n\r\n" + b"x" * 20000 + b"\r\n",
            body(4, size=300_000),
        ]
        result = self.wait(
            session.append(
                b"INBOX",
                [
                    AppendMessage(
                        bodies[0], (b"\\Seen", b"$Label1"), b"01-Jan-2020 10:00:00 +0100"
                    ),
                    AppendMessage(bodies[1], (b"\\Flagged",)),
                    AppendMessage(bodies[2]),
                    AppendMessage(bodies[3], (b"\\Answered",)),
                ],
            )
        )
        self.assertEqual(result.uids, (1, 2, 3, 4))
        self.assertEqual(self.server_of(session).commands, [b"ENABLE", b"APPEND"])
        stored = self.store.messages(b"INBOX")
        self.assertEqual([m.body for m in stored.values()], bodies)
        self.assertEqual(stored[1].flags, {b"\\Seen", b"$Label1"})

        selected = self.wait(session.select_qresync(b"INBOX"))
        self.assertEqual((selected.uidnext, selected.exists), (5, 4))
        self.assertEqual(selected.uidvalidity, result.uidvalidity)
        received: List[FetchedMessage] = []

        def slow_sink(message: FetchedMessage) -> Deferred[None]:
            received.append(message)
            # Backpressure: the next message waits for this Deferred.
            return deferLater(self.clock, 0.01, lambda: None)

        count = self.wait(session.fetch_messages(UIDSet.parse(b"1:4"), slow_sink))
        self.assertEqual(count, 4)
        self.assertEqual([m.body for m in received], bodies)
        self.assertEqual(set(received[0].flags), {b"\\Seen", b"$Label1"})
        self.assertEqual(
            _parse_date(received[0].internaldate), _parse_date(b"01-Jan-2020 10:00:00 +0100")
        )
        # \Recent (this session saw them first) never reaches the API.
        self.assertEqual(received[2].flags, ())
        flags = self.wait(session.fetch_flags(UIDSet.parse(b"1:4")))
        self.assertEqual(set(flags[2][1]), {b"\\Flagged"})
        self.assertEqual(self.store.messages(b"INBOX")[3].flags, set())

    def test_select_qresync_reports_changes_of_another_client(self) -> None:
        uids = self.store.append_many(b"INBOX", [(body(i), (), None) for i in range(10)])
        session = self.open()
        self.wait(session.enable(b"QRESYNC"))
        first = self.wait(session.select_qresync(b"INBOX"))
        self.wait(session.unselect())
        self.assertIsNone(session.selected)
        # Another client changes flags and expunges.
        self.store.set_flags(b"INBOX", [uids[1], uids[3]], [b"\\Seen", b"$Done"])
        self.store.expunge(b"INBOX", [uids[5], uids[6]])
        again = self.wait(
            session.select_qresync(
                b"INBOX", first.uidvalidity, first.highestmodseq, UIDSet.from_iterable(uids)
            )
        )
        self.assertEqual(list(again.vanished), [uids[5], uids[6]])
        self.assertEqual(sorted(again.changes), [uids[1], uids[3]])
        self.assertEqual(set(again.changes[uids[1]][1]), {b"\\Seen", b"$Done"})
        self.assertGreater(again.highestmodseq, first.highestmodseq)
        changes = self.wait(session.fetch_changes(first.highestmodseq, UIDSet.from_iterable(uids)))
        self.assertEqual(list(changes.vanished), [uids[5], uids[6]])
        self.assertEqual(sorted(changes.changes), [uids[1], uids[3]])

    def test_select_qresync_with_another_uidvalidity_reports_nothing(self) -> None:
        uids = self.store.append_many(b"INBOX", [(body(i), (), None) for i in range(3)])
        session = self.open()
        self.wait(session.enable(b"QRESYNC"))
        first = self.wait(session.select_qresync(b"INBOX"))
        self.wait(session.unselect())
        self.store.expunge(b"INBOX", uids[0])
        new_validity = self.store.reset_uidvalidity(b"INBOX")
        again = self.wait(
            session.select_qresync(
                b"INBOX", first.uidvalidity, first.highestmodseq, UIDSet.from_iterable(uids)
            )
        )
        self.assertEqual(again.uidvalidity, new_validity)
        self.assertNotEqual(new_validity, first.uidvalidity)
        self.assertEqual((list(again.vanished), dict(again.changes)), ([], {}))
        self.assertEqual(list(self.store.messages(b"INBOX")), [1, 2])

    def test_store_unchangedsince_and_expunge(self) -> None:
        uids = self.store.append_many(b"INBOX", [(body(i), (), None) for i in range(5)])
        session = self.open()
        self.wait(session.enable(b"QRESYNC"))
        selected = self.wait(session.select_qresync(b"INBOX"))
        modseq = selected.highestmodseq
        self.store.set_flags(b"INBOX", [uids[0]], [b"$Other"])
        stored = self.wait(
            session.uid_store(
                UIDSet.from_iterable(uids[:2]), [b"\\Seen"], b"+", unchangedsince=modseq
            )
        )
        self.assertEqual(list(stored.modified), [uids[0]])
        self.assertGreater(stored.modseqs[uids[1]], modseq)
        messages = self.store.messages(b"INBOX")
        self.assertEqual(messages[uids[0]].flags, {b"$Other"})
        self.assertEqual(messages[uids[1]].flags, {b"\\Seen"})

        self.wait(session.uid_store(UIDSet.from_iterable(uids[2:4]), [b"\\Deleted"], b"+"))
        gone = self.wait(session.uid_expunge(UIDSet.from_iterable(uids[2:4])))
        self.assertEqual(list(gone), uids[2:4])
        self.assertEqual(list(self.store.messages(b"INBOX")), [uids[0], uids[1], uids[4]])
        found = self.wait(session.uid_search(b"UNSEEN"))
        self.assertEqual(list(found), [uids[0], uids[4]])
        # The expunge's MODSEQ came in the tagged OK.
        self.assertEqual(
            selected_of(session).highestmodseq, self.store.status(b"INBOX")["HIGHESTMODSEQ"]
        )

    def test_uid_expunge_leaves_messages_not_deleted(self) -> None:
        uids = self.store.append_many(b"INBOX", [(body(i), (), None) for i in range(3)])
        self.store.set_flags(b"INBOX", uids[0], [b"\\Deleted"])
        session = self.open()
        self.wait(session.enable(b"QRESYNC"))
        self.wait(session.select_qresync(b"INBOX"))
        gone = self.wait(session.uid_expunge(UIDSet.from_iterable(uids)))
        self.assertEqual(list(gone), [uids[0]])
        self.assertEqual(list(self.store.messages(b"INBOX")), uids[1:])

    def test_search_without_esearch(self) -> None:
        self.store.append_many(b"INBOX", [(body(1), [b"\\Seen"], None), (body(2), (), None)])
        session = self.open(capabilities=without(DEFAULT_CAPABILITIES, b"ESEARCH"))
        self.wait(session.select_qresync(b"INBOX"))
        self.assertEqual(list(self.wait(session.uid_search(b"UNSEEN"))), [2])

    def test_notify_reports_new_mail(self) -> None:
        # As with Dovecot 2.3, a watcher waits with no mailbox selected.
        self.store.create(b"Other")
        session = self.open()
        self.wait(session.enable(b"QRESYNC"))
        events: List[Response] = []
        session.add_observer(events.append)
        self.wait(session.notify_set(notify_spec()))

        def status_of(mailbox: bytes) -> Optional[StatusResponse]:
            found = [e for e in events if isinstance(e, StatusResponse) and e.mailbox == mailbox]
            return found[-1] if found else None

        self.store.append(b"INBOX", body(1))
        self.store.append(b"Other", body(2))
        # No command needed: the events come at once.
        for pump in self.net.pumps:
            pump.flush()
        self.assertIsNotNone(status_of(b"INBOX"))
        other = status_of(b"Other")
        assert other is not None
        self.assertEqual((other.items[b"UIDNEXT"], other.items[b"MESSAGES"]), (2, 1))

    def test_notify_reports_mailbox_changes(self) -> None:
        self.store.create(b"A/B")
        session = self.open()
        events: List[Response] = []
        session.add_observer(events.append)
        self.wait(session.notify_set(notify_spec()))
        self.store.create(b"New")
        self.store.rename(b"A", b"Z")
        self.store.subscribe(b"New")
        self.store.delete(b"New")
        for pump in self.net.pumps:
            pump.flush()
        lists = [
            (e.mailbox, e.attributes, e.extended) for e in events if isinstance(e, ListResponse)
        ]
        self.assertEqual(
            lists,
            [
                (b"New", (b"\\HasNoChildren",), {}),
                (b"A", (b"\\NonExistent",), {}),
                (b"Z/B", (b"\\HasNoChildren",), {b"OLDNAME": [b"A/B"]}),
                (b"Z", (b"\\Noselect", b"\\HasChildren"), {}),
                (b"New", (b"\\Subscribed", b"\\HasNoChildren"), {}),
                (b"New", (b"\\NonExistent",), {}),
            ],
        )

    def test_second_notify_set_silences_events(self) -> None:
        # Dovecot 2.3.19's behaviour, which imapsync must work around.
        session = self.open()
        events: List[Response] = []
        session.add_observer(events.append)
        self.wait(session.notify_set(notify_spec()))
        self.wait(session.notify_set(notify_spec()))
        self.store.append(b"INBOX", body(1))
        for pump in self.net.pumps:
            pump.flush()
        self.assertEqual(events, [])

    def test_unsolicited_changes_of_selected_mailbox(self) -> None:
        uids = self.store.append_many(b"INBOX", [(body(1), (), None), (body(2), (), None)])
        session = self.open()
        self.wait(session.enable(b"QRESYNC"))
        self.wait(session.select_qresync(b"INBOX"))
        self.store.set_flags(b"INBOX", [uids[0]], [b"\\Answered"])
        self.store.expunge(b"INBOX", [uids[1]])
        new = self.store.append(b"INBOX", body(3))
        for pump in self.net.pumps:
            pump.flush()
        # Nothing until the next command completes, as on Dovecot.
        self.assertEqual(list(session.take_changes().vanished), [])
        self.wait(session.noop())
        changes = session.take_changes()
        self.assertEqual(list(changes.vanished), [uids[1]])
        self.assertEqual(set(changes.changes[uids[0]][1]), {b"\\Answered"})
        self.assertEqual(selected_of(session).exists, 2)
        self.assertEqual(
            selected_of(session).highestmodseq, self.store.status(b"INBOX")["HIGHESTMODSEQ"]
        )
        self.assertEqual(list(self.wait(session.uid_search(b"ALL"))), [uids[0], new])

    def test_deleting_the_selected_mailbox_disconnects(self) -> None:
        self.store.create(b"Other")
        session = self.open()
        self.wait(session.select_qresync(b"Other"))
        self.store.delete(b"Other")
        with self.assertRaises(ByeResponse):
            self.wait(session.noop())

    def test_without_literal_plus(self) -> None:
        caps = without(DEFAULT_CAPABILITIES, b"LITERAL+")
        session = self.open(capabilities=caps)
        result = self.wait(
            session.append(b"INBOX", [AppendMessage(body(1)), AppendMessage(body(2), (b"$X",))])
        )
        self.assertEqual(result.uids, (1, 2))
        self.assertEqual(self.store.messages(b"INBOX")[2].body, body(2))

    def test_without_multiappend(self) -> None:
        caps = without(DEFAULT_CAPABILITIES, b"MULTIAPPEND")
        session = self.open(capabilities=caps)
        result = self.wait(session.append(b"INBOX", [AppendMessage(body(i)) for i in range(3)]))
        self.assertEqual(result.uids, (1, 2, 3))
        self.assertEqual(self.server_of(session).commands, [b"APPEND"] * 3)

    def test_append_refusals(self) -> None:
        session = self.open()
        with self.assertRaises(NoResponse) as raised:
            self.wait(session.append(b"Nope", [AppendMessage(body(1))]))
        self.assertEqual(raised.exception.code.name, b"TRYCREATE")
        with self.assertRaises(BadResponse):
            self.wait(session.append(b"INBOX", [AppendMessage(body(1), (b"\\Bogus",))]))
        self.assertEqual(self.store.messages(b"INBOX"), {})


class AuthenticationTests(FakeTestCase):
    users = {"alice": "s3cret pass"}

    def login(self, **options: Any) -> IMAPSession:
        options.setdefault("preauth", False)
        options.setdefault("users", self.users)
        options.setdefault("username", "alice")
        options.setdefault("password", "s3cret pass")
        return self.open(**options)

    def test_plain_with_sasl_ir(self) -> None:
        session = self.login(auth=("PLAIN",))
        session.require(SYNC_CAPABILITIES)
        self.assertEqual(self.server_of(session).commands, [b"AUTHENTICATE"])

    def test_plain_without_sasl_ir(self) -> None:
        prelogin = (b"IMAP4rev1", b"AUTH=PLAIN")
        session = self.login(auth=("PLAIN",), prelogin_capabilities=prelogin)
        session.require(SYNC_CAPABILITIES)

    def test_login_command(self) -> None:
        session = self.login(auth=("LOGIN",), prelogin_capabilities=(b"IMAP4rev1",))
        self.assertEqual(self.server_of(session).commands, [b"LOGIN"])
        self.wait(session.noop())

    def test_wrong_password(self) -> None:
        with self.assertRaises(AuthenticationError) as raised:
            self.login(password="nope")
        self.assertNotIn("nope", str(raised.exception))
        self.assertIn("Authentication failed", str(raised.exception))

    def test_commands_before_login_are_refused(self) -> None:
        server = FakeIMAPServer(self.store, preauth=False)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(b"1 SELECT INBOX\r\n2 AUTHENTICATE PLAIN\r\n")
        blob = base64.b64encode(b"\0alice\0wrong")
        server.dataReceived(blob + b"\r\n")
        self.assertEqual(
            transport.value(),
            b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID ENABLE LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n"
            b"1 BAD Error in IMAP command received by server.\r\n"
            b"+ \r\n"
            b"2 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
        )


class FaultTests(FakeTestCase):
    def test_drop_before_execution(self) -> None:
        session = self.open()
        lost = session.when_lost()
        self.store.faults.drop_before(b"APPEND")
        with self.assertRaises(ConnectionLostError):
            self.wait(session.append(b"INBOX", [AppendMessage(body(1))]))
        self.assertEqual(self.store.messages(b"INBOX"), {})
        self.assertIsInstance(self.successResultOf(lost), ConnectionLostError)
        self.assertEqual(self.store.servers, [])

    def test_drop_after_execution(self) -> None:
        # The server stored the APPEND; we never saw its OK [APPENDUID].
        session = self.open()
        self.store.faults.drop_after(b"APPEND")
        with self.assertRaises(ConnectionLostError):
            self.wait(session.append(b"INBOX", [AppendMessage(body(1)), AppendMessage(body(2))]))
        self.assertEqual(
            [m.body for m in self.store.messages(b"INBOX").values()], [body(1), body(2)]
        )
        # A new connection works (the rule fired once).
        again = self.open()
        self.assertEqual(self.wait(again.append(b"INBOX", [AppendMessage(body(3))])).uids, (3,))

    def test_drop_skips_earlier_commands(self) -> None:
        session = self.open()
        self.store.faults.drop_before(b"CREATE", skip=1)
        self.wait(session.create(b"One"))
        with self.assertRaises(ConnectionLostError):
            self.wait(session.create(b"Two"))
        self.assertEqual(set(self.store.mailboxes), {b"INBOX", b"One"})

    def test_pipelined_commands_after_a_drop_are_not_run(self) -> None:
        session = self.open()
        self.server_of(session).faults.drop_after(b"CREATE")
        first = session.create(b"One")
        second = session.create(b"Two")
        with self.assertRaises(ConnectionLostError):
            self.wait(first)
        self.failureResultOf(second, ConnectionLostError)
        self.assertEqual(set(self.store.mailboxes), {b"INBOX", b"One"})

    def test_refuse(self) -> None:
        session = self.open()
        self.store.faults.refuse(b"CREATE", b"Quota exceeded", code=b"OVERQUOTA", times=1)
        with self.assertRaises(NoResponse) as raised:
            self.wait(session.create(b"One"))
        self.assertEqual(raised.exception.text, "Quota exceeded")
        self.assertEqual(raised.exception.code.name, b"OVERQUOTA")
        self.wait(session.create(b"One"))
        self.assertIn(b"One", self.store.mailboxes)

    def test_hook_changes_the_store_mid_run(self) -> None:
        # The other client appends while we fetch: we hear of it at the end.
        uid = self.store.append(b"INBOX", body(1))
        session = self.open()
        self.wait(session.enable(b"QRESYNC"))
        self.wait(session.select_qresync(b"INBOX"))
        seen: List[Tuple[bytes, bytes]] = []

        def hook(name: bytes, raw: bytes) -> Optional[Fault]:
            seen.append((name, raw))
            if name == b"UID FETCH":
                self.store.append(b"INBOX", body(2))
            return None

        self.store.on_command(hook)
        # A bare lambda's result (here a UID) is no action.
        self.store.on_command(
            lambda name, raw: (
                self.store.append(b"INBOX", body(3)) if name == b"UID FETCH" else None
            )
        )
        got: List[bytes] = []
        self.wait(session.fetch_messages(b"1:*", lambda m: got.append(m.body)))
        self.assertEqual(got, [body(1)])
        self.assertEqual(selected_of(session).exists, 3)
        self.assertEqual(
            seen,
            [(b"UID FETCH", b"3 UID FETCH 1:* (UID MODSEQ FLAGS INTERNALDATE BODY.PEEK[])\r\n")],
        )
        self.assertEqual(uid, 1)

    def test_reply_from_a_hook(self) -> None:
        session = self.open()
        self.store.on_command(
            lambda name, raw: Reply(b"BAD", b"nope") if name == b"NOOP" else None
        )
        with self.assertRaises(BadResponse):
            self.wait(session.noop())

    def test_server_down(self) -> None:
        self.store.faults.refuse_connections = True
        with self.assertRaises(ByeResponse):
            self.open()

    def test_disconnect_all(self) -> None:
        sessions = [self.open(), self.open()]
        self.store.disconnect_all()
        for session in sessions:
            with self.assertRaises(ConnectionLostError):
                self.wait(session.noop())


class RunTests(FakeTestCase):
    def test_result_and_failure(self) -> None:
        self.assertEqual(run(succeed(3), [], self.clock), 3)
        with self.assertRaises(ValueError):
            run(fail(ValueError("x")), [], self.clock)

    def test_advances_the_clock_when_idle(self) -> None:
        d = deferLater(self.clock, 30, lambda: "late")
        self.assertEqual(run(d, [], self.clock), "late")
        self.assertEqual(self.clock.seconds(), 30)

    def test_stall_raises(self) -> None:
        with self.assertRaises(AssertionError) as raised:
            run(Deferred(), [], self.clock)
        self.assertIn("stalled", str(raised.exception))

    def test_a_hung_server_times_out(self) -> None:
        # run advances the Clock to the client's timeout instead of hanging.
        session = self.open(timeout=60)
        self.store.faults.hang(b"NOOP")
        with self.assertRaises(CommandTimeoutError):
            self.wait(session.noop())
        self.assertEqual(self.clock.seconds(), 60)

    def test_connect_session(self) -> None:
        session, pump = connect_session(self.store, self.clock, "remote")
        self.assertEqual(session.name, "remote")
        self.assertIsInstance(pump.server, FakeIMAPServer)
        self.assertEqual(run(session.create(b"X"), [pump], self.clock), None)
        self.assertIn(b"X", self.store.mailboxes)

    def test_open_during_a_run(self) -> None:
        # An engine that opens its own connections gets them from net.open.
        async def engine() -> bytes:
            session = await self.net.open(self.store, "remote")
            await session.create(b"Made")
            return b"done"

        self.assertEqual(self.wait(Deferred.fromCoroutine(engine())), b"done")
        self.assertIn(b"Made", self.store.mailboxes)


class StoreTests(SynchronousTestCase):
    def test_snapshot_is_comparable_across_separators(self) -> None:
        local, remote = MailStore(), MailStore(separator=b".")
        for store, name in ((local, b"A/B"), (remote, b"A.B")):
            store.create(name)
            store.append(name, body(1), [b"\\Seen", b"$X"], b"01-Jan-2020 10:00:00 +0100")
        self.assertEqual(local.snapshot(internaldate=True), remote.snapshot(internaldate=True))
        self.assertEqual(
            local.snapshot(internaldate=True),
            {
                ("INBOX",): [],
                ("A", "B"): [
                    (
                        hashlib.sha256(body(1)).hexdigest(),
                        ("$X", "\\Seen"),
                        "2020-01-01T09:00:00+00:00",
                    )
                ],
            },
        )
        self.assertNotEqual(
            local.mailbox(b"INBOX").uidvalidity, remote.mailbox(b"INBOX").uidvalidity
        )

    def test_modseqs(self) -> None:
        store = MailStore()
        mailbox = store.mailbox(b"INBOX")
        self.assertEqual(mailbox.highestmodseq, 1)
        uids = store.append_many(b"INBOX", [(body(1), (), None), (body(2), (), None)])
        self.assertEqual([m.modseq for m in mailbox.messages.values()], [2, 2])
        store.set_flags(b"INBOX", uids[0], [b"\\Seen"], mode="add")
        self.assertEqual(mailbox.messages[1].modseq, 3)
        # Unchanged flags: no new MODSEQ.
        store.set_flags(b"INBOX", uids[0], [b"\\Seen"], mode="add")
        self.assertEqual(mailbox.highestmodseq, 3)
        store.expunge(b"INBOX", uids[1])
        self.assertEqual((mailbox.highestmodseq, mailbox.expunged), (4, {2: 4}))
        self.assertRaises(ValueError, store.expunge, b"INBOX", 2)
        self.assertRaises(ValueError, store.set_flags, b"INBOX", 1, [b"\\Recent"])

    def test_hierarchy(self) -> None:
        store = MailStore()
        store.create(b"a/b/c")
        self.assertEqual(store.placeholders, {b"a", b"a/b"})
        with self.assertRaises(MailStoreError) as raised:
            store.delete(b"a")
        self.assertIn("children", str(raised.exception))
        store.create(b"a")
        store.delete(b"a")
        self.assertIn(b"a", store.placeholders)
        store.rename(b"a", b"x/y")
        self.assertEqual(store.names(), [b"INBOX", b"x", b"x/y", b"x/y/b", b"x/y/b/c"])
        self.assertRaises(MailStoreError, store.rename, b"x", b"x/y/z")
        self.assertRaises(MailStoreError, store.create, b"x//y")
        self.assertRaises(MailStoreError, store.create, b"caf\xc3\xa9")
        self.assertRaises(MailStoreError, store.delete, b"inbox")

    def test_rename_inbox(self) -> None:
        store = MailStore()
        store.append(b"INBOX", body(1))
        validity = store.mailbox(b"INBOX").uidvalidity
        store.rename(b"inbox", b"Old")
        self.assertEqual(store.mailbox(b"Old").uidvalidity, validity)
        self.assertEqual(len(store.messages(b"Old")), 1)
        self.assertEqual(store.messages(b"INBOX"), {})

    def test_mutf7(self) -> None:
        for text in ("Caf\u00e9", "&", "a&b", "\u65e5\u672c/x", "\U0001f600", "plain"):
            self.assertEqual(mutf7_decode(mutf7_encode(text)), text)
        self.assertEqual(mutf7_encode("Caf\u00e9"), encode_mailbox("Caf\u00e9"))
        for bad in (b"&ZeVnLIqe", b"caf\xc3\xa9", b"&AGE-", b"&Jjo"):
            self.assertRaises(ValueError, mutf7_decode, bad)


class WireTests(SynchronousTestCase):
    """Exchanges recorded with Dovecot 2.3.19, replayed against the fake."""

    def connect(self, store: MailStore) -> Tuple[FakeIMAPServer, StringTransport]:
        server = FakeIMAPServer(store)
        transport = StringTransport()
        server.makeConnection(transport)
        transport.clear()
        return server, transport

    def exchange(self, side: Tuple[FakeIMAPServer, StringTransport], data: bytes) -> bytes:
        server, transport = side
        server.dataReceived(data)
        out = bytes(transport.value())
        transport.clear()
        return out.replace(b" (0.001 + 0.000 secs).", b"")

    def test_two_sessions(self) -> None:
        store = MailStore(uidvalidity_base=1795971017)
        a, b = self.connect(store), self.connect(store)
        self.exchange(
            a, b"a APPEND INBOX (\\Seen) {1+}\r\n1 () {1+}\r\n2 () {1+}\r\n3 () {1+}\r\n4\r\n"
        )
        self.exchange(a, b"a ENABLE QRESYNC\r\n")
        self.assertEqual(
            self.exchange(a, b"b SELECT INBOX\r\n"),
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
            b"Flags permitted.\r\n"
            b"* 4 EXISTS\r\n* 4 RECENT\r\n* OK [UNSEEN 2] First unseen.\r\n"
            b"* OK [UIDVALIDITY 1795971018] UIDs valid\r\n"
            b"* OK [UIDNEXT 5] Predicted next UID\r\n* OK [HIGHESTMODSEQ 2] Highest\r\n"
            b"b OK [READ-WRITE] Select completed\r\n",
        )
        self.exchange(b, b"a ENABLE QRESYNC\r\n")
        self.assertIn(b"* 0 RECENT\r\n", self.exchange(b, b"b SELECT INBOX\r\n"))
        self.assertEqual(
            self.exchange(a, b"s UID STORE 1 (UNCHANGEDSINCE 100) +FLAGS (\\Seen)\r\n"),
            b"s OK Store completed\r\n",
        )
        self.assertEqual(
            self.exchange(a, b"s UID STORE 3,4 +FLAGS.SILENT (\\Deleted)\r\n"),
            b"* 3 FETCH (UID 3 MODSEQ (3))\r\n* 4 FETCH (UID 4 MODSEQ (3))\r\n"
            b"s OK Store completed\r\n",
        )
        self.assertEqual(
            self.exchange(a, b"e UID EXPUNGE 3:4\r\n"),
            b"* VANISHED 3:4\r\n* 2 RECENT\r\ne OK [HIGHESTMODSEQ 4] Expunge completed\r\n",
        )
        self.assertEqual(
            self.exchange(a, b"s UID STORE 2 +FLAGS.SILENT (\\Answered $New)\r\n"),
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $New)\r\n"
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $New \\*)] "
            b"Flags permitted.\r\n"
            b"* 2 FETCH (UID 2 MODSEQ (6))\r\ns OK Store completed\r\n",
        )
        self.assertEqual(
            self.exchange(a, b"a APPEND INBOX () {1+}\r\n6\r\n"),
            b"* 3 EXISTS\r\n* 3 RECENT\r\n* OK [HIGHESTMODSEQ 7] Highest\r\n"
            b"a OK [APPENDUID 1795971018 5] Append completed\r\n",
        )
        self.assertEqual(
            self.exchange(b, b"n NOOP\r\n"),
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $New)\r\n"
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $New \\*)] "
            b"Flags permitted.\r\n"
            b"* 2 FETCH (UID 2 MODSEQ (6) FLAGS (\\Answered $New))\r\n"
            b"* VANISHED 3:4\r\n* 3 EXISTS\r\nn OK [HIGHESTMODSEQ 7] NOOP completed\r\n",
        )
        self.assertEqual(
            self.exchange(a, b"b4 SELECT INBOX (QRESYNC (1795971018 1 1:4))\r\n"),
            b"* OK [CLOSED] Previous mailbox closed.\r\n"
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $New)\r\n"
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $New \\*)] "
            b"Flags permitted.\r\n"
            b"* 3 EXISTS\r\n* 0 RECENT\r\n* OK [UNSEEN 2] First unseen.\r\n"
            b"* OK [UIDVALIDITY 1795971018] UIDs valid\r\n"
            b"* OK [UIDNEXT 6] Predicted next UID\r\n* OK [HIGHESTMODSEQ 7] Highest\r\n"
            b"* VANISHED (EARLIER) 3:4\r\n"
            b"* 1 FETCH (UID 1 FLAGS (\\Seen) MODSEQ (2))\r\n"
            b"* 2 FETCH (UID 2 FLAGS (\\Answered $New) MODSEQ (6))\r\n"
            b"b4 OK [READ-WRITE] Select completed\r\n",
        )

    def test_fetch_and_search(self) -> None:
        store = MailStore(uidvalidity_base=1000)
        a = self.connect(store)
        self.assertEqual(
            self.exchange(a, b"a APPEND INBOX (\\Seen $Label1) {5+}\r\nhello (\\Flagged) {3}\r\n"),
            b"+ OK\r\n",
        )
        self.assertEqual(
            self.exchange(a, b"abc\r\n"), b"a OK [APPENDUID 1001 1:2] Append completed\r\n"
        )
        self.exchange(a, b"b SELECT INBOX (CONDSTORE)\r\n")
        self.assertEqual(
            self.exchange(a, b"c UID FETCH 2 (BODY[])\r\n"),
            b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Seen \\Recent) BODY[] {3}\r\nabc)\r\n"
            b"* 2 FETCH (MODSEQ (3))\r\nc OK Fetch completed\r\n",
        )
        self.assertEqual(
            self.exchange(a, b"c UID FETCH 1:* (UID MODSEQ FLAGS) (CHANGEDSINCE 2 VANISHED)\r\n"),
            b"c BAD Error in IMAP command UID FETCH: QRESYNC not enabled\r\n",
        )
        self.assertEqual(
            self.exchange(a, b"x UID SEARCH RETURN (ALL) UID 99\r\nx UID SEARCH UNSEEN\r\n"),
            b'* ESEARCH (TAG "x") UID\r\nx OK Search completed\r\n'
            b"* SEARCH\r\nx OK Search completed\r\n",
        )
        self.assertEqual(
            self.exchange(a, b"m FOO\r\nm2 UID FOO\r\nm3 SELECT\r\nu UNSELECT\r\nu UNSELECT\r\n"),
            b"m BAD Error in IMAP command FOO: Unknown command\r\n"
            b"m2 BAD Error in IMAP command UID FOO: Unknown command\r\n"
            b"m3 BAD Error in IMAP command SELECT: Invalid arguments\r\n"
            b"u OK Unselect completed\r\nu BAD No mailbox selected\r\n",
        )

    def test_list(self) -> None:
        store = MailStore()
        a = self.connect(store)
        self.exchange(
            a, b"e CREATE Work/Projects\r\ne CREATE Other/\r\ng SUBSCRIBE Work/Projects\r\n"
        )
        self.assertEqual(
            self.exchange(a, b'f LIST "" "*"\r\n'),
            b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
            b'* LIST (\\Noselect \\HasNoChildren) "/" Other\r\n'
            b'* LIST (\\Noselect \\HasChildren) "/" Work\r\n'
            b'* LIST (\\HasNoChildren) "/" Work/Projects\r\n'
            b"f OK List completed\r\n",
        )
        self.assertEqual(
            self.exchange(
                a, b'h LIST (SUBSCRIBED) "" "*" RETURN (SUBSCRIBED STATUS (UIDNEXT))\r\n'
            ),
            b'* LIST (\\Subscribed) "/" Work/Projects\r\n'
            b"* STATUS Work/Projects (UIDNEXT 1)\r\nh OK List completed\r\n",
        )
        self.assertEqual(
            self.exchange(a, b'h LIST "" ""\r\nh LIST "" "%" RETURN ()\r\n'),
            b'* LIST (\\Noselect) "/" ""\r\nh OK List completed\r\n'
            b'* LIST () "/" INBOX\r\n* LIST (\\Noselect) "/" Other\r\n'
            b'* LIST (\\Noselect) "/" Work\r\nh OK List completed\r\n',
        )
        self.assertEqual(
            self.exchange(a, b"k DELETE Work\r\nk DELETE INBOX\r\nk STATUS Work (FOO)\r\n"),
            b"k NO Mailbox has children, delete them first\r\n"
            b"k NO INBOX can't be deleted\r\n"
            b"k BAD Error in IMAP command STATUS: Invalid status item FOO\r\n",
        )


# Operations on one mailbox, for the QRESYNC property below.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.sampled_from([(), (b"\\Seen",), (b"$A", b"\\Flagged")])),
        st.tuples(
            st.just("flags"), st.integers(0, 30), st.sampled_from([(), (b"\\Seen",), (b"$B",)])
        ),
        st.tuples(st.just("expunge"), st.integers(0, 30)),
    ),
    max_size=12,
)


class QResyncPropertyTests(SynchronousTestCase):
    @settings(max_examples=40, deadline=None)
    @given(before=operations, after=operations)
    def test_select_qresync_reports_exactly_what_changed(
        self, before: List[Tuple[Any, ...]], after: List[Tuple[Any, ...]]
    ) -> None:
        """From a checkpoint, VANISHED (EARLIER) and the FETCHes of a QRESYNC
        SELECT turn the old state into the current one."""
        clock = Clock()
        net = FakeNetwork(clock)
        store = MailStore()

        def apply(ops: List[Tuple[Any, ...]]) -> None:
            for op in ops:
                present = sorted(store.messages(b"INBOX"))
                if op[0] == "append":
                    store.append(b"INBOX", body(len(present)), op[1])
                elif present:
                    uid = present[op[1] % len(present)]
                    if op[0] == "flags":
                        store.set_flags(b"INBOX", uid, op[2])
                    else:
                        store.expunge(b"INBOX", uid)

        apply(before)
        mailbox = store.mailbox(b"INBOX")
        checkpoint = mailbox.highestmodseq
        old: Dict[int, Set[bytes]] = {u: set(m.flags) for u, m in mailbox.messages.items()}
        apply(after)
        session = net.connect(store)
        net.run(session.enable(b"QRESYNC"))
        result = net.run(
            session.select_qresync(
                b"INBOX", mailbox.uidvalidity, checkpoint, UIDSet.from_iterable(old) or None
            )
        )
        state = {u: f for u, f in old.items() if u not in set(result.vanished)}
        for uid, (_, flags) in result.changes.items():
            if uid in old:
                state[uid] = set(flags)
        known_now = {u: m.flags for u, m in mailbox.messages.items() if u in old}
        self.assertEqual(state, known_now)
        if old:
            # Known UIDs were given: only those are reported.
            self.assertTrue(set(result.vanished) <= set(old))
        self.assertEqual(result.highestmodseq, mailbox.highestmodseq)

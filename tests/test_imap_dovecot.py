"""The session API against a real Dovecot 2.3: tunnels and a daemon on 127.0.0.1.

What each test checks is read back through the harness's own small client
(tests/dovecot.py), not through ours.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
import tempfile
from typing import Any, Awaitable, Callable, List, Optional, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from imapsync.imap.connect import ServerSettings, open_session
from imapsync.imap.errors import (
    AuthenticationError,
    CapabilityMissingError,
    FingerprintMismatchError,
    NoResponse,
    ProtocolError,
    TLSVerificationError,
)
from imapsync.imap.response import Response, StatusResponse
from imapsync.imap.session import (
    SYNC_CAPABILITIES,
    AppendMessage,
    FetchedMessage,
    IMAPSession,
    notify_spec,
)
from imapsync.imap.tls import TLSSettings, format_fingerprint, spki_fingerprint
from imapsync.imap.uidset import UIDSet
from imapsync.imap.utf7 import decode_mailbox, encode_mailbox
from tests import certs
from tests.dovecot import DovecotDaemon, DovecotStore, make_message, require_dovecot

T = TypeVar("T")


def async_test(f: Callable[..., Awaitable[None]]) -> Callable[..., Deferred[None]]:
    @functools.wraps(f)
    def wrapper(*args: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(f(*args))  # type: ignore[arg-type]

    return wrapper


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded) until ``check()`` holds."""
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await deferLater(reactor, 0.05)  # type: ignore[arg-type]
    raise AssertionError(f"condition not met within {timeout} s")


def _parse_date(value: Optional[bytes]) -> datetime.datetime:
    assert value is not None
    return datetime.datetime.strptime(value.decode(), "%d-%b-%Y %H:%M:%S %z")


def body(i: int, size: int = 2000) -> bytes:
    return make_message(f"message {i}", f"body of message {i}", size=size)


class TunnelTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        require_dovecot(self)
        self.tmp = tempfile.mkdtemp(prefix="imapsync-t-")
        self.store = DovecotStore(os.path.join(self.tmp, "local"), separator="/")
        self.sessions: List[IMAPSession] = []

    def tearDown(self) -> Deferred[None]:
        async def close() -> None:
            for session in self.sessions:
                await session.logout()
            for session in self.sessions:
                await _wait_closed(session)

        return Deferred.fromCoroutine(close())  # type: ignore[arg-type]

    async def open(self, command: Optional[str] = None, **kwargs: Any) -> IMAPSession:
        settings = ServerSettings(
            name="local", type="tunnel", command=command or self.store.tunnel_command, **kwargs
        )
        session = await open_session(reactor, settings)
        self.sessions.append(session)
        return session

    @async_test
    async def test_capabilities_for_sync(self) -> None:
        session = await self.open()
        session.require(SYNC_CAPABILITIES)
        for capability in (b"NOTIFY", b"LITERAL+", b"MULTIAPPEND", b"COMPRESS=DEFLATE"):
            self.assertTrue(session.has_capability(capability), capability)
        enabled = await session.enable(b"QRESYNC")
        self.assertIn(b"QRESYNC", enabled)
        server = await session.id({b"name": b"imapsync"})
        self.assertEqual(server.get(b"name"), b"Dovecot")
        await session.noop()

    @async_test
    async def test_missing_qresync_is_named(self) -> None:
        session = await self.open(self.store.tunnel_command_without(["QRESYNC", "CONDSTORE"]))
        error = self.assertRaises(CapabilityMissingError, session.require, SYNC_CAPABILITIES)
        self.assertIn("QRESYNC", str(error))

    @async_test
    async def test_mailboxes(self) -> None:
        session = await self.open()
        names = [
            b"Work",
            b"Work/Projects",
            b"with space",
            b'quote"back\\slash',
            encode_mailbox("Caf\u00e9/\u65e5\u672c"),
        ]
        for name in names:
            await session.create(name)
        await session.subscribe(b"Work/Projects")
        await session.rename(b"with space", b"renamed space")
        await session.delete(b"renamed space")
        listed = {m.name: m for m in await session.list_extended()}
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
        # The harness (its own client) sees the same names.
        self.assertIn("Caf\u00e9/\u65e5\u672c", self.store.list_mailboxes())
        self.assertEqual(decode_mailbox(encode_mailbox("Caf\u00e9")), "Caf\u00e9")
        subscribed = await session.list_extended(selection=[b"SUBSCRIBED"], status=())
        self.assertEqual([m.name for m in subscribed], [b"Work/Projects"])
        status = await session.status(b"Work", [b"MESSAGES", b"UIDNEXT", b"HIGHESTMODSEQ"])
        self.assertEqual(status[b"MESSAGES"], 0)
        with self.assertRaises(NoResponse):
            await session.create(b"Work")

    @async_test
    async def test_append_and_fetch_byte_identical(self) -> None:
        session = await self.open()
        await session.enable(b"QRESYNC")
        bodies = [
            body(1),
            b"Subject: 8bit\r\n\r\ncaf\xc3\xa9 \xff\xfe binary-ish \x01\x02\r\n",
            b"Subject: long\r\n\r\n" + b"x" * 20000 + b"\r\n",
            body(4, size=300_000),
        ]
        result = await session.append(
            b"INBOX",
            [
                AppendMessage(bodies[0], (b"\\Seen", b"$Label1"), b"01-Jan-2020 10:00:00 +0100"),
                AppendMessage(bodies[1], (b"\\Flagged",)),
                AppendMessage(bodies[2]),
                AppendMessage(bodies[3], (b"\\Answered",)),
            ],
        )
        self.assertEqual(result.uids, (1, 2, 3, 4))
        stored = self.store.messages("INBOX")
        self.assertEqual(
            [m.sha256 for m in stored], [hashlib.sha256(b).hexdigest() for b in bodies]
        )
        self.assertEqual(set(stored[0].flags) - {"\\Recent"}, {"\\Seen", "$Label1"})

        selected = await session.select_qresync(b"INBOX")
        self.assertEqual((selected.uidnext, selected.exists), (5, 4))
        self.assertEqual(selected.uidvalidity, result.uidvalidity)
        received: List[FetchedMessage] = []

        def slow_sink(message: FetchedMessage) -> Deferred[None]:
            received.append(message)
            # Backpressure: the next message waits for this Deferred.
            return deferLater(reactor, 0.01, lambda: None)  # type: ignore[arg-type]

        count = await session.fetch_messages(UIDSet.parse(b"1:4"), slow_sink)
        self.assertEqual(count, 4)
        self.assertEqual([m.body for m in received], bodies)
        self.assertEqual(set(received[0].flags), {b"\\Seen", b"$Label1"})
        self.assertEqual(
            _parse_date(received[0].internaldate), _parse_date(b"01-Jan-2020 10:00:00 +0100")
        )
        flags = await session.fetch_flags(UIDSet.parse(b"1:4"))
        self.assertEqual(set(flags[2][1]), {b"\\Flagged"})

    @async_test
    async def test_select_qresync_reports_changes_of_another_client(self) -> None:
        uids = self.store.append_many("INBOX", [body(i) for i in range(10)])
        session = await self.open()
        await session.enable(b"QRESYNC")
        first = await session.select_qresync(b"INBOX")
        await session.unselect()
        self.assertIsNone(session.selected)
        # Another client changes flags and expunges.
        self.store.set_flags("INBOX", [uids[1], uids[3]], ["\\Seen", "$Done"])
        self.store.expunge("INBOX", [uids[5], uids[6]])
        again = await session.select_qresync(
            b"INBOX", first.uidvalidity, first.highestmodseq, UIDSet.from_iterable(uids)
        )
        self.assertEqual(list(again.vanished), [uids[5], uids[6]])
        self.assertEqual(sorted(again.changes), [uids[1], uids[3]])
        self.assertEqual(set(again.changes[uids[1]][1]), {b"\\Seen", b"$Done"})
        self.assertGreater(again.highestmodseq, first.highestmodseq)
        changes = await session.fetch_changes(first.highestmodseq, UIDSet.from_iterable(uids))
        self.assertEqual(list(changes.vanished), [uids[5], uids[6]])
        self.assertEqual(sorted(changes.changes), [uids[1], uids[3]])

    @async_test
    async def test_store_unchangedsince_and_expunge(self) -> None:
        uids = self.store.append_many("INBOX", [body(i) for i in range(5)])
        session = await self.open()
        await session.enable(b"QRESYNC")
        selected = await session.select_qresync(b"INBOX")
        modseq = selected.highestmodseq
        self.store.set_flags("INBOX", [uids[0]], ["$Other"])
        stored = await session.uid_store(
            UIDSet.from_iterable(uids[:2]), [b"\\Seen"], b"+", unchangedsince=modseq
        )
        self.assertEqual(list(stored.modified), [uids[0]])
        self.assertGreater(stored.modseqs[uids[1]], modseq)
        messages = {m.uid: m for m in self.store.messages("INBOX")}
        self.assertEqual(set(messages[uids[0]].flags) - {"\\Recent"}, {"$Other"})
        self.assertEqual(set(messages[uids[1]].flags) - {"\\Recent"}, {"\\Seen"})

        await session.uid_store(UIDSet.from_iterable(uids[2:4]), [b"\\Deleted"], b"+")
        gone = await session.uid_expunge(UIDSet.from_iterable(uids[2:4]))
        self.assertEqual(list(gone), uids[2:4])
        self.assertEqual(
            [m.uid for m in self.store.messages("INBOX")], [uids[0], uids[1], uids[4]]
        )
        found = await session.uid_search(b"UNSEEN")
        self.assertEqual(list(found), [uids[0], uids[4]])

    @async_test
    async def test_notify_reports_new_mail(self) -> None:
        # Dovecot 2.3 reports nothing through NOTIFY for the selected
        # mailbox (not even after 30 s), only STATUS for the others: so a
        # watcher waits with no mailbox selected.
        self.store.create_mailbox("Other")
        session = await self.open()
        await session.enable(b"QRESYNC")
        events: List[Response] = []
        session.add_observer(events.append)
        await session.notify_set(notify_spec())

        def status_of(mailbox: bytes) -> Optional[StatusResponse]:
            found = [e for e in events if isinstance(e, StatusResponse) and e.mailbox == mailbox]
            return found[-1] if found else None

        self.store.append("INBOX", body(1))
        self.store.append("Other", body(2))
        await eventually(lambda: status_of(b"INBOX") is not None)
        await eventually(lambda: status_of(b"Other") is not None)
        self.assertEqual(status_of(b"Other").items[b"UIDNEXT"], 2)

    @async_test
    async def test_unsolicited_changes_of_selected_mailbox(self) -> None:
        uids = self.store.append_many("INBOX", [body(1), body(2)])
        session = await self.open()
        await session.enable(b"QRESYNC")
        await session.select_qresync(b"INBOX")
        self.store.set_flags("INBOX", [uids[0]], ["\\Answered"])
        self.store.expunge("INBOX", [uids[1]])
        await session.noop()
        changes = session.take_changes()
        self.assertEqual(list(changes.vanished), [uids[1]])
        self.assertEqual(set(changes.changes[uids[0]][1]), {b"\\Answered"})

    @async_test
    async def test_compress(self) -> None:
        session = await self.open(compress=True)
        self.assertIsNotNone(session.protocol._inflater)
        result = await session.append(b"INBOX", [AppendMessage(body(i)) for i in range(20)])
        self.assertEqual(len(result.uids), 20)
        await session.select_qresync(b"INBOX")
        got: List[bytes] = []
        await session.fetch_messages(UIDSet.parse(b"1:20"), lambda m: got.append(m.body))
        self.assertEqual(got, [body(i) for i in range(20)])

    @async_test
    async def test_separator_dot(self) -> None:
        store = DovecotStore(os.path.join(self.tmp, "remote"), separator=".", name="remote")
        session = await self.open(store.tunnel_command)
        await session.create(b"Work.Projects")
        listed = {m.name: m.delimiter for m in await session.list_extended()}
        self.assertEqual(listed[b"Work.Projects"], b".")
        self.assertIn("Work.Projects", store.list_mailboxes())


async def _wait_closed(session: IMAPSession) -> None:
    closed = session.when_closed()
    closed.addTimeout(15, reactor)
    await closed


class DaemonTests(TestCase):
    """imap, STARTTLS and imaps with a real Dovecot on 127.0.0.1."""

    timeout = 60

    def setUp(self) -> None:
        require_dovecot(self)
        tmp = tempfile.mkdtemp(prefix="imapsync-d-")
        self.ca = certs.make_ca()
        self.server = self.ca.issue(["localhost"], ["127.0.0.1"])
        self.pems = certs.write_pem_files(os.path.join(tmp, "pki"), self.server, self.ca)
        self.daemon = DovecotDaemon(
            os.path.join(tmp, "d"),
            users={"alice": "s3cret-pass"},
            certificate=self.server.cert_pem,
            key=self.server.key_pem,
        )
        self.daemon.start()
        self.addCleanup(self.daemon.stop)
        self.sessions: List[IMAPSession] = []

    def tearDown(self) -> Deferred[None]:
        async def close() -> None:
            for session in self.sessions:
                await session.logout()
                await _wait_closed(session)

        return Deferred.fromCoroutine(close())  # type: ignore[arg-type]

    def settings(self, **kwargs: Any) -> ServerSettings:
        tls = kwargs.pop("tls", TLSSettings(hostname="localhost", cafile=self.pems.ca))
        values: dict[str, Any] = dict(
            name="remote",
            type="imap",
            host="localhost",
            port=self.daemon.imap_port,
            username="alice",
            password="s3cret-pass",
            tls=tls,
            timeout=20,
        )
        values.update(kwargs)
        return ServerSettings(**values)

    async def open(self, settings: ServerSettings) -> IMAPSession:
        session = await open_session(reactor, settings)
        self.sessions.append(session)
        return session

    @async_test
    async def test_starttls_plain(self) -> None:
        session = await self.open(self.settings(auth=("PLAIN",)))
        self.assertIsNotNone(session.protocol.transport.getPeerCertificate())
        session.require(SYNC_CAPABILITIES)
        listed = await session.list_extended()
        self.assertEqual([m.name for m in listed], [b"INBOX"])

    @async_test
    async def test_starttls_login_command(self) -> None:
        session = await self.open(self.settings(auth=("LOGIN",)))
        await session.noop()

    @async_test
    async def test_imaps(self) -> None:
        session = await self.open(
            self.settings(
                type="imaps",
                port=self.daemon.imaps_port,
                host="127.0.0.1",
                tls=TLSSettings(hostname="127.0.0.1", cafile=self.pems.ca),
            )
        )
        await session.append(b"INBOX", [AppendMessage(body(1))])
        self.assertEqual(len(self.daemon.store("alice").messages("INBOX")), 1)

    @async_test
    async def test_plain_tcp_without_starttls(self) -> None:
        session = await self.open(self.settings(starttls=False, tls=None))
        await session.noop()

    @async_test
    async def test_wrong_password(self) -> None:
        with self.assertRaises(AuthenticationError) as raised:
            await open_session(reactor, self.settings(password="nope"))
        self.assertNotIn("nope", str(raised.exception))

    @async_test
    async def test_unknown_ca(self) -> None:
        with self.assertRaises(TLSVerificationError) as raised:
            await open_session(reactor, self.settings(tls=TLSSettings(hostname="localhost")))
        self.assertIn("localhost", str(raised.exception))

    @async_test
    async def test_pin_mismatch_sends_no_credentials(self) -> None:
        other = certs.make_self_signed(["localhost"])
        pin = format_fingerprint("sha256", spki_fingerprint(other.certificate))
        tls = TLSSettings(hostname="localhost", verify=False, fingerprints=(pin,))
        with self.assertRaises(FingerprintMismatchError):
            await open_session(reactor, self.settings(tls=tls, auth=("LOGIN",)))
        log = self.daemon.log_path.read_text(errors="replace")
        self.assertNotIn("alice", log)

    @async_test
    async def test_pin_match_without_ca(self) -> None:
        pin = format_fingerprint("sha256", spki_fingerprint(self.server.certificate))
        other = format_fingerprint("sha256", b"\0" * 32)
        tls = TLSSettings(hostname="localhost", verify=False, fingerprints=(other, pin))
        session = await self.open(self.settings(tls=tls))
        await session.noop()

    @async_test
    async def test_starttls_required_but_not_offered(self) -> None:
        plain = DovecotDaemon(
            os.path.join(tempfile.mkdtemp(prefix="imapsync-p-"), "d"), users={"alice": "x"}
        )
        plain.start()
        self.addCleanup(plain.stop)
        with self.assertRaises(CapabilityMissingError) as raised:
            await open_session(reactor, self.settings(port=plain.imap_port, password="x"))
        self.assertIn("STARTTLS", str(raised.exception))

    @async_test
    async def test_connection_refused(self) -> None:
        with self.assertRaises(Exception) as raised:
            await open_session(reactor, self.settings(port=1, timeout=5))
        self.assertIn("cannot connect", str(raised.exception))

    @async_test
    async def test_bad_greeting_is_protocol_error(self) -> None:
        # A tunnel that is not an IMAP server.
        command = "printf 'HTTP/1.1 400 Bad Request\\r\\n'; exec sleep 5"
        settings = ServerSettings(name="local", type="tunnel", command=command, timeout=5)
        with self.assertRaises(ProtocolError):
            await open_session(reactor, settings)

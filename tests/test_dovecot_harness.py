"""Tests for tests/dovecot.py, the real-Dovecot harness of the integration tier."""

from __future__ import annotations

import datetime
import hashlib
import os
import select
import shlex
import socket
import ssl
import subprocess
import time
import zlib
from typing import Callable, Optional
from unittest import SkipTest

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import ProcessEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests import dovecot
from tests.dovecot import (
    DovecotDaemon,
    DovecotStore,
    IMAPConnection,
    make_message,
    require_dovecot,
)

_EXTENSIONS = {
    b"QRESYNC",
    b"CONDSTORE",
    b"NOTIFY",
    b"LIST-STATUS",
    b"LIST-EXTENDED",
    b"COMPRESS=DEFLATE",
    b"UIDPLUS",
    b"MULTIAPPEND",
    b"LITERAL+",
    b"ENABLE",
}


def _set_env(testcase: SynchronousTestCase, name: str, value: Optional[str]) -> None:
    old = os.environ.get(name)

    def restore() -> None:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old

    testcase.addCleanup(restore)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class RequireDovecotTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(dovecot, "_find_dovecot", lambda: (None, "no dovecot here"))
        _set_env(self, "CI", None)
        _set_env(self, "IMAPSYNC_REQUIRE_DOVECOT", None)

    def test_skips_with_reason(self) -> None:
        """Outside CI a missing Dovecot skips, saying why."""
        _set_env(self, "CI", "false")
        e = self.assertRaises(SkipTest, require_dovecot, self)
        self.assertIn("no dovecot here", str(e))

    def test_fails_in_ci(self) -> None:
        _set_env(self, "CI", "true")
        e = self.assertRaises(self.failureException, require_dovecot, self)
        self.assertIn("no dovecot here", str(e))

    def test_fails_when_required(self) -> None:
        _set_env(self, "IMAPSYNC_REQUIRE_DOVECOT", "1")
        self.assertRaises(self.failureException, require_dovecot, self)


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        require_dovecot(self)
        self.local = DovecotStore(self.mktemp(), "/", "local")
        self.remote = DovecotStore(self.mktemp(), ".", "remote")

    def tearDown(self) -> None:
        for store in (self.local, self.remote):
            self.assertEqual(store.log_problems(), [])

    def test_tunnel_greets_with_extensions(self) -> None:
        """The tunnel command, as a command= value, reaches a logged-in
        Dovecot with everything the sync engine uses, running unprivileged."""
        argv = shlex.split(self.local.tunnel_command)
        with IMAPConnection(argv) as imap:
            self.assertEqual(imap.greeting.status, b"PREAUTH")
            self.assertEqual(_EXTENSIONS - imap.capabilities, set())
            self.assertEqual(imap.refresh_capabilities() & _EXTENSIONS, _EXTENSIONS)
            # The tunnel execs down to imap itself: its PID is Dovecot's.
            with open(f"/proc/{imap.pid}/status") as status:
                uid = next(line.split()[1] for line in status if line.startswith("Uid:"))
                self.assertNotEqual(uid, "0")

    def test_separators_show_in_list(self) -> None:
        for store in (self.local, self.remote):
            store.create_mailbox(store.mailbox_name("a", "b"))
        local, remote = self.local.list_mailboxes(), self.remote.list_mailboxes()
        self.assertEqual(local["a/b"].separator, "/")
        self.assertEqual(remote["a.b"].separator, ".")
        self.assertEqual(local["INBOX"].separator, "/")
        self.assertEqual(remote["INBOX"].separator, ".")
        self.assertEqual(self.local.snapshot(), self.remote.snapshot())
        self.assertEqual(set(self.local.snapshot()), {("INBOX",), ("a", "b")})
        # The other side's separator is an ordinary character here.
        self.local.create_mailbox("x.y")
        self.assertEqual(self.local.list_mailboxes()["x.y"].path, ("x.y",))

    def test_append_flags_expunge_round_trip(self) -> None:
        message = make_message("round trip", "body\n")
        date = datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
        uid = self.local.append("INBOX", message, ["\\Seen", "$Forwarded"], date)
        second = self.local.append("INBOX", make_message("second"))
        self.assertEqual((uid, second), (1, 2))
        [first, _] = self.local.messages("INBOX")
        self.assertEqual(first.uid, 1)
        self.assertEqual(first.flags - {"\\Recent"}, {"\\Seen", "$Forwarded"})
        self.assertEqual(first.internaldate, date)
        self.assertEqual(first.sha256, hashlib.sha256(message).hexdigest())
        self.assertEqual(self.local.body("INBOX", 1), message)

        before = self.local.status("INBOX")
        self.local.set_flags("INBOX", 1, ["\\Flagged"])
        self.local.set_flags("INBOX", [1, 2], ["\\Answered"], mode="add")
        self.local.set_flags("INBOX", 2, ["\\Answered"], mode="remove")
        after = self.local.status("INBOX")
        self.assertGreater(after["HIGHESTMODSEQ"], before["HIGHESTMODSEQ"])
        self.assertEqual(after["UIDVALIDITY"], before["UIDVALIDITY"])
        flags = {m.uid: m.flags - {"\\Recent"} for m in self.local.messages("INBOX")}
        self.assertEqual(flags, {1: {"\\Flagged", "\\Answered"}, 2: set()})

        self.local.expunge("INBOX", [2])
        status = self.local.status("INBOX")
        self.assertEqual((status["MESSAGES"], status["UIDNEXT"]), (1, 3))
        self.assertEqual([m.uid for m in self.local.messages("INBOX")], [1])

        snapshot = self.local.snapshot(internaldate=True)
        self.assertEqual(
            snapshot,
            {
                ("INBOX",): [
                    (
                        hashlib.sha256(message).hexdigest(),
                        ("\\Answered", "\\Flagged"),
                        "2020-01-02T03:04:05+00:00",
                    )
                ]
            },
        )

    def test_snapshots_compare_stores(self) -> None:
        """Same content under different separators and UIDs: equal snapshots;
        one flag of difference: unequal."""
        messages = [make_message(f"m{i}") for i in range(3)]
        self.local.create_mailbox("work/2024")
        self.local.append_many("work/2024", [(m, ["\\Seen"], None) for m in messages])
        self.remote.create_mailbox("work.2024")
        self.remote.append("work.2024", make_message("gone"))
        self.remote.expunge("work.2024", [1])
        for m in reversed(messages):
            self.remote.append("work.2024", m, ["\\Seen"])
        self.assertEqual(self.local.snapshot(), self.remote.snapshot())
        self.remote.set_flags("work.2024", 2, ["\\Seen", "\\Flagged"])
        self.assertNotEqual(self.local.snapshot(), self.remote.snapshot())

    def test_bulk_seeding_is_fast(self) -> None:
        start = time.monotonic()
        uids = self.local.append_many(
            "INBOX", (make_message(f"bulk {i}", size=4000) for i in range(500))
        )
        seeded = time.monotonic() - start
        self.assertEqual(uids, list(range(1, 501)))
        self.assertEqual(self.local.status("INBOX")["MESSAGES"], 500)
        self.assertEqual(len(self.local.snapshot()[("INBOX",)]), 500)
        self.assertLess(seeded, 10.0)

    def test_mail_formats(self) -> None:
        """Every storage format keeps both separators and the data."""
        message = make_message("format")
        for mail_format in ("sdbox", "mdbox", "maildir"):
            for separator in "/.":
                store = DovecotStore(self.mktemp(), separator, mail_format=mail_format)
                store.create_mailbox(store.mailbox_name("a", "b"))
                store.append(store.mailbox_name("a", "b"), message, ["\\Seen"])
                expected = {
                    ("INBOX",): [],
                    ("a", "b"): [(hashlib.sha256(message).hexdigest(), ("\\Seen",))],
                }
                self.assertEqual(store.snapshot(), expected, (mail_format, separator))
                self.assertEqual(store.list_mailboxes()["INBOX"].separator, separator)
                self.assertEqual(store.log_problems(), [])
        # What maildir's fs layout reserves is an ordinary name by default.
        self.local.create_mailbox("new/cur/tmp")

    def test_mailbox_operations(self) -> None:
        self.remote.create_mailbox("Entwürfe", subscribe=True)
        self.remote.create_mailbox("old")
        self.remote.rename_mailbox("old", "archive.2023")
        self.remote.subscribe("archive.2023")
        self.remote.create_mailbox("trash")
        self.remote.delete_mailbox("trash")
        mailboxes = self.remote.list_mailboxes()
        self.assertEqual(set(mailboxes), {"INBOX", "Entwürfe", "archive", "archive.2023"})
        self.assertEqual(mailboxes["Entwürfe"].raw, b"Entw&APw-rfe")
        self.assertTrue(mailboxes["Entwürfe"].subscribed)
        self.assertFalse(mailboxes["archive"].selectable)
        self.remote.unsubscribe("Entwürfe")
        self.assertEqual(self.remote.subscriptions(), {("archive", "2023")})

    def test_capability_filter_strips(self) -> None:
        argv = self.local.tunnel_argv_without(["QRESYNC", "condstore"])
        self.assertEqual(
            shlex.split(self.local.tunnel_command_without(["QRESYNC"]))[-2:],
            self.local.tunnel_argv,
        )
        # Literal data passes untouched, even when it looks like CAPABILITY.
        tricky = make_message("tricky", "* CAPABILITY IMAP4rev1 QRESYNC\n")
        self.local.append("INBOX", tricky)
        with IMAPConnection(argv) as imap:
            self.assertEqual(imap.capabilities & {b"QRESYNC", b"CONDSTORE"}, set())
            self.assertIn(b"NOTIFY", imap.capabilities)
            capabilities = imap.refresh_capabilities()
            self.assertEqual(capabilities & {b"QRESYNC", b"CONDSTORE"}, set())
            self.assertIn(b"COMPRESS=DEFLATE", capabilities)
            imap.select("INBOX")
            result = imap.command(b"UID FETCH", b"1", b"BODY.PEEK[]")
        items = result.data(b"FETCH")[0][2]
        self.assertEqual(items[items.index(b"BODY[]") + 1], tricky)

    def test_capability_filter_across_compress(self) -> None:
        """After COMPRESS=DEFLATE the filter inflates, strips, deflates."""
        argv = self.local.tunnel_argv_without(["QRESYNC"])
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.addCleanup(dovecot._stop_process, proc, 5.0)
        self.addCleanup(proc.stdout.close)  # type: ignore[union-attr]
        self.addCleanup(proc.stdin.close)  # type: ignore[union-attr]
        greeting = _read_until(proc, b"\r\n", lambda data: data)
        self.assertNotIn(b"QRESYNC", greeting)
        proc.stdin.write(b"z1 COMPRESS DEFLATE\r\n")  # type: ignore[union-attr]
        self.assertIn(b"z1 OK", _read_until(proc, b"z1 ", lambda data: data))
        deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        inflate = zlib.decompressobj(-15)
        command = b"z2 CAPABILITY\r\nz3 LOGOUT\r\n"
        proc.stdin.write(deflate.compress(command) + deflate.flush(zlib.Z_SYNC_FLUSH))  # type: ignore[union-attr]
        response = _read_until(proc, b"z3 OK", inflate.decompress)
        self.assertIn(b"* CAPABILITY IMAP4rev1 ", response)
        self.assertIn(b"CONDSTORE", response)
        self.assertNotIn(b"QRESYNC", response)


def _read_until(
    proc: subprocess.Popen[bytes], marker: bytes, decode: Callable[[bytes], bytes]
) -> bytes:
    assert proc.stdout is not None
    data = b""
    deadline = time.monotonic() + 10
    while marker not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([proc.stdout], [], [], remaining)[0]:
            raise AssertionError(f"timeout waiting for {marker!r}, got {data!r}")
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            raise AssertionError(f"EOF waiting for {marker!r}, got {data!r}")
        data += decode(chunk)
    return data


def _self_signed() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


class _Client:
    """A line-oriented test client on a socket (no literals needed here)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.greeting = self.reader.readline()

    def command(self, line: bytes) -> list[bytes]:
        tag = line.split(b" ", 1)[0]
        self.sock.sendall(line + b"\r\n")
        lines: list[bytes] = []
        while True:
            response = self.reader.readline()
            if not response:
                raise AssertionError(f"connection closed, got {lines!r}")
            lines.append(response)
            if response.startswith(tag + b" "):
                return lines

    def starttls(self) -> None:
        self.assertOK(self.command(b"s1 STARTTLS"))
        self.reader.close()
        self.sock = _tls_context().wrap_socket(self.sock, server_hostname="localhost")
        self.reader = self.sock.makefile("rb")

    @staticmethod
    def assertOK(lines: list[bytes]) -> None:
        if b" OK " not in lines[-1]:
            raise AssertionError(f"not OK: {lines!r}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def _tls_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class DaemonTests(SynchronousTestCase):
    certificate: Optional[tuple[bytes, bytes]] = None

    def setUp(self) -> None:
        require_dovecot(self)
        if DaemonTests.certificate is None:
            DaemonTests.certificate = _self_signed()

    def start(self, **kwargs: object) -> DovecotDaemon:
        assert self.certificate is not None
        cert, key = self.certificate
        daemon = DovecotDaemon(
            self.mktemp(),
            {"alice": "secret", "bob": "hunter2"},
            cert,
            key,
            **kwargs,  # type: ignore[arg-type]
        )
        daemon.start()
        self.addCleanup(daemon.stop)
        return daemon

    def connect(self, daemon: DovecotDaemon, port: Optional[int] = None) -> _Client:
        sock = socket.create_connection((daemon.host, port or daemon.imap_port), timeout=10)
        client = _Client(sock)
        self.addCleanup(client.close)
        return client

    def test_login_over_imap(self) -> None:
        daemon = self.start()
        self.assertEqual(daemon.host, "127.0.0.1")
        client = self.connect(daemon)
        for capability in (b" STARTTLS", b" AUTH=PLAIN", b" AUTH=LOGIN"):
            self.assertIn(capability, client.greeting)
        self.assertIn(b"a NO ", client.command(b"a LOGIN alice wrong")[-1])
        client.assertOK(client.command(b"b LOGIN bob hunter2"))
        lines = client.command(b"c SELECT INBOX")
        client.assertOK(lines)
        self.assertIn(b"* 0 EXISTS\r\n", lines)

    def test_starttls(self) -> None:
        daemon = self.start()
        client = self.connect(daemon)
        client.starttls()
        der = client.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        assert self.certificate is not None
        self.assertEqual(
            der,
            x509.load_pem_x509_certificate(self.certificate[0]).public_bytes(
                serialization.Encoding.DER
            ),
        )
        capabilities = client.command(b"c CAPABILITY")[0]
        self.assertNotIn(b"STARTTLS", capabilities)
        client.assertOK(client.command(b"l LOGIN alice secret"))

    def test_imaps_and_shared_store(self) -> None:
        """imaps with AUTHENTICATE PLAIN; the tunnel store is the same mail."""
        daemon = self.start()
        message = make_message("via tunnel")
        daemon.store("alice").append("INBOX", message, ["\\Seen"])
        assert daemon.imaps_port is not None
        sock = _tls_context().wrap_socket(
            socket.create_connection((daemon.host, daemon.imaps_port), timeout=10),
            server_hostname="localhost",
        )
        client = _Client(sock)
        self.addCleanup(client.close)
        self.assertIn(b"AUTH=PLAIN", client.greeting)
        client.assertOK(client.command(b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA=="))
        self.assertIn(b"* 1 EXISTS\r\n", client.command(b"b SELECT INBOX"))
        client.assertOK(client.command(b"c UID STORE 1 +FLAGS (\\Flagged)"))
        [info] = daemon.store("alice").messages("INBOX")
        self.assertEqual(info.flags - {"\\Recent"}, {"\\Seen", "\\Flagged"})
        self.assertEqual(daemon.store("bob").messages("INBOX"), [])

    def test_stop_leaves_no_process(self) -> None:
        daemon = self.start()
        self.connect(daemon).command(b"a LOGIN alice secret")
        pid = daemon.pid
        assert pid is not None
        processes = [pid] + [child for child, _ in dovecot._descendants(pid)]
        self.assertGreater(len(processes), 3)
        daemon.stop()
        for process in processes:
            self.assertFalse(os.path.exists(f"/proc/{process}"), process)
        self.assertRaises(OSError, socket.create_connection, ("127.0.0.1", daemon.imap_port))
        daemon.stop()

    def test_plaintext_auth_disabled(self) -> None:
        """LOGINDISABLED until STARTTLS (so the daemon listens on 127.0.0.2:
        Dovecot trusts a connection from its own address)."""
        daemon = self.start(plaintext_auth=False)
        client = self.connect(daemon)
        self.assertIn(b" LOGINDISABLED", client.greeting)
        self.assertIn(b"PRIVACYREQUIRED", client.command(b"a LOGIN alice secret")[-1])
        client.starttls()
        client.assertOK(client.command(b"b LOGIN alice secret"))

    def test_advertised_capabilities(self) -> None:
        daemon = self.start(auth_mechanisms=["plain"], login_capability="+XYZZY")
        client = self.connect(daemon)
        self.assertIn(b" AUTH=PLAIN", client.greeting)
        self.assertNotIn(b"AUTH=LOGIN", client.greeting)
        self.assertIn(b" XYZZY", client.greeting)


class _Collector(Protocol):
    """Collects what a process prints; ``until(marker)`` waits for a marker."""

    def __init__(self) -> None:
        self.data = b""
        self.closed: Deferred[None] = Deferred()
        self._waiters: list[tuple[bytes, Deferred[bytes]]] = []

    def until(self, marker: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self._waiters.append((marker, d))
        self.dataReceived(b"")
        return d

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for waiter in [w for w in self._waiters if w[0] in self.data]:
            self._waiters.remove(waiter)
            waiter[1].callback(self.data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed.callback(None)


class TwistedUsageTests(TestCase):
    """The harness in a reactor-driven test, as the client and engine tests
    use it: blocking set-up and checks around asynchronous work."""

    def setUp(self) -> None:
        require_dovecot(self)
        self.store = DovecotStore(self.mktemp(), "/", "local")
        self.store.append("INBOX", make_message("seeded"))

    async def test_tunnel_under_the_reactor(self) -> None:
        """The tunnel needs nothing from its environment (even an empty one,
        ProcessEndpoint's default)."""
        from twisted.internet import reactor

        argv = self.store.tunnel_argv
        endpoint = ProcessEndpoint(reactor, argv[0], argv, env={})
        protocol = await connectProtocol(endpoint, _Collector())
        await protocol.until(b"\r\n").addTimeout(10, reactor)
        self.assertIn(b"QRESYNC", protocol.data)
        protocol.transport.write(b"a STATUS INBOX (MESSAGES)\r\nb LOGOUT\r\n")
        await protocol.until(b"b OK").addTimeout(10, reactor)
        self.assertIn(b"(MESSAGES 1)", protocol.data)
        await protocol.closed.addTimeout(10, reactor)
        # Blocking helpers still work while the reactor runs.
        self.assertEqual(len(self.store.messages("INBOX")), 1)

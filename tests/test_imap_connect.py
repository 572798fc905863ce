"""Connection set-up: tunnel commands, greeting and STARTTLS policy, login order."""

from __future__ import annotations

from typing import List

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from imapsync.imap._protocol import IMAP4ClientProtocol
from imapsync.imap.connect import ServerSettings, _setup, tunnel_argv
from imapsync.imap.errors import CapabilityMissingError, ProtocolError
from imapsync.imap.session import IMAPSession


class TunnelArgvTests(SynchronousTestCase):
    def test_plain_command_is_split(self) -> None:
        self.assertEqual(
            tunnel_argv("/usr/lib/dovecot/imap -c /etc/dovecot/x.conf"),
            ["/usr/lib/dovecot/imap", "-c", "/etc/dovecot/x.conf"],
        )

    def test_shell_metacharacters_use_sh(self) -> None:
        for command in (
            "ssh host 'doveadm exec imap'",
            "doveadm exec imap 2>/dev/null",
            "FOO=1 doveadm exec imap",
            "imap | tee log",
        ):
            self.assertEqual(tunnel_argv(command), ["/bin/sh", "-c", command])


class SetupTests(SynchronousTestCase):
    def start(
        self, settings: ServerSettings
    ) -> tuple[IMAP4ClientProtocol, StringTransport, Deferred[None]]:
        clock = Clock()
        protocol = IMAP4ClientProtocol(clock)
        transport = StringTransport()
        protocol.makeConnection(transport)
        session = IMAPSession(protocol, settings.name)
        d = Deferred.fromCoroutine(_setup(clock, settings, protocol, session, object()))  # type: ignore[arg-type]
        return protocol, transport, d

    def test_preauth_in_clear_text_with_starttls_aborts(self) -> None:
        settings = ServerSettings(type="imap", username="u", password="p")
        protocol, transport, d = self.start(settings)
        protocol.dataReceived(b"* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
        failure = self.failureResultOf(d, ProtocolError)
        self.assertIn("STARTTLS=NO", str(failure.value))
        self.assertEqual(transport.value(), b"")

    def test_starttls_not_offered_sends_no_credentials(self) -> None:
        settings = ServerSettings(type="imap", username="alice", password="secret")
        protocol, transport, d = self.start(settings)
        protocol.dataReceived(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n")
        failure = self.failureResultOf(d, CapabilityMissingError)
        self.assertIn("STARTTLS", str(failure.value))
        self.assertNotIn(b"alice", transport.value())
        self.assertNotIn(b"secret", transport.value())

    def test_starttls_comes_before_login(self) -> None:
        settings = ServerSettings(type="imap", username="alice", password="secret")
        protocol, transport, d = self.start(settings)
        started: List[object] = []
        transport.startTLS = started.append  # type: ignore[method-assign]
        protocol.dataReceived(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] hi\r\n")
        self.assertEqual(transport.value(), b"1 STARTTLS\r\n")
        transport.clear()
        protocol.dataReceived(b"1 OK go\r\n")
        self.assertEqual(len(started), 1)
        self.assertEqual(transport.value(), b"2 CAPABILITY\r\n")
        transport.clear()
        protocol.dataReceived(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR\r\n2 OK\r\n")
        self.assertTrue(transport.value().startswith(b"3 AUTHENTICATE PLAIN "))
        protocol.dataReceived(b"3 OK [CAPABILITY IMAP4rev1 QRESYNC] in\r\n")
        self.successResultOf(d)

    def test_tunnel_preauth_needs_no_login(self) -> None:
        settings = ServerSettings(type="tunnel", command="imap")
        protocol, transport, d = self.start(settings)
        protocol.dataReceived(b"* PREAUTH [CAPABILITY IMAP4rev1 QRESYNC] Logged in\r\n")
        self.successResultOf(d)
        self.assertEqual(transport.value(), b"")

    def test_compress_when_configured_and_offered(self) -> None:
        settings = ServerSettings(type="tunnel", command="imap", compress=True)
        protocol, transport, d = self.start(settings)
        protocol.dataReceived(b"* PREAUTH [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] hi\r\n")
        self.assertEqual(transport.value(), b"1 COMPRESS DEFLATE\r\n")
        protocol.dataReceived(b"1 OK deflate\r\n")
        self.successResultOf(d)

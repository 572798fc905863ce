"""Tests for imapsync.imap.tls: settings, key pins, and real (in-memory) TLS
handshakes against servers using certificates made by tests.certs."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import tempfile
from importlib.metadata import version
from typing import Any, Optional

from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from imapsync.imap.errors import FingerprintMismatchError, TLSVerificationError
from imapsync.imap.tls import (
    ClientTLSCreator,
    TLSConfigError,
    TLSSettings,
    _PeerCheck,
    format_fingerprint,
    parse_fingerprint,
    spki_fingerprint,
)
from tests import certs

HOST = "imap.example.org"
CLIENT_HELLO = b"a1 CAPABILITY\r\n"
SERVER_GREETING = b"* OK [CAPABILITY IMAP4rev1] ready\r\n"


def _has_tls13_ciphersuites() -> bool:
    return hasattr(SSL.Context, "set_tls13_ciphersuites")


def _service_identity_requires_san() -> bool:
    return int(version("service-identity").split(".")[0]) >= 24


class _Peer(Protocol):
    """An application protocol that sends a greeting and records what happens."""

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.received = b""
        self.lost: Optional[Failure] = None

    def connectionMade(self) -> None:
        self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


@implementer(IOpenSSLServerConnectionCreator)
class _Server:
    """A TLS server with one certificate; records the SNI each client sent."""

    def __init__(self, served: certs.CertifiedKey, *, max_version: Optional[int] = None) -> None:
        self.server_names: list[Optional[bytes]] = []
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        served.use_in(context)
        if max_version is not None:
            context.set_max_proto_version(max_version)
        context.set_tlsext_servername_callback(self._server_name)
        self._context = context

    def _server_name(self, connection: SSL.Connection) -> None:
        self.server_names.append(connection.get_servername())

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return SSL.Connection(self._context, None)


class _Handshake:
    """Client and server application protocols after pumping a connection dry."""

    def __init__(self, creator: ClientTLSCreator, server: _Server) -> None:
        self.client = _Peer(CLIENT_HELLO)
        self.server = _Peer(SERVER_GREETING)
        self.client_tls = _wrap(creator, True, self.client)
        server_tls = _wrap(server, False, self.server)
        iosim.connect(
            server_tls,
            iosim.makeFakeServer(server_tls),
            self.client_tls,
            iosim.makeFakeClient(self.client_tls),
        )

    @property
    def connection(self) -> SSL.Connection:
        handle: SSL.Connection = self.client_tls.getHandle()
        return handle


def _wrap(creator: object, is_client: bool, peer: _Peer) -> TLSMemoryBIOProtocol:
    application = Factory()
    application.buildProtocol = lambda addr: peer  # type: ignore[method-assign]
    factory = TLSMemoryBIOFactory(creator, is_client, application)  # type: ignore[arg-type]
    # Newer Twisted's default protocol batches writes with callLater on the
    # global reactor, which never runs in these synchronous tests.
    factory.protocol = TLSMemoryBIOProtocol
    protocol: TLSMemoryBIOProtocol = factory.buildProtocol(None)
    return protocol


class _Certificates:
    """One CA and a few certificates, made once: key generation is the slow part."""

    ca = certs.make_ca()
    other_ca = certs.make_ca("some other CA")
    server = ca.issue([HOST])
    other_host = ca.issue(["other.example.org", "*.example.net"])
    ip = ca.issue([], ["127.0.0.1", "::1"])
    cn_only = ca.issue([], common_name=HOST)
    expired = ca.issue(
        [HOST],
        not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
        not_after=datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC),
    )
    foreign = other_ca.issue([HOST])
    self_signed = certs.make_self_signed([HOST, "localhost"], ["127.0.0.1"])
    rsa = ca.issue([HOST], key=certs.make_key("rsa"))


class _TLSTestCase(SynchronousTestCase):
    c = _Certificates

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def cafile(self, ca: certs.CertifiedKey | None = None) -> str:
        return self.write("ca.pem", (ca or self.c.ca).cert_pem)

    def handshake(
        self, served: certs.CertifiedKey, server: Optional[_Server] = None, **settings: object
    ) -> _Handshake:
        settings.setdefault("hostname", HOST)
        creator = ClientTLSCreator(TLSSettings(**settings))  # type: ignore[arg-type]
        return _Handshake(creator, server or _Server(served))

    def assertConnected(self, result: _Handshake) -> None:
        self.assertIsNone(result.client.lost)
        self.assertEqual(result.server.received, CLIENT_HELLO)
        self.assertEqual(result.client.received, SERVER_GREETING)

    def assertRefused(self, result: _Handshake, error: type[Exception]) -> str:
        """The client gave up with C{error}, before any application data went either way."""
        assert result.client.lost is not None
        result.client.lost.trap(error)
        self.assertEqual(result.server.received, b"")
        self.assertEqual(result.client.received, b"")
        return str(result.client.lost.value)


class VerificationTests(_TLSTestCase):
    def test_interface(self) -> None:
        creator = ClientTLSCreator(TLSSettings(hostname=HOST, cafile=self.cafile()))
        self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, creator))

    def test_trusted_ca_file(self) -> None:
        self.assertConnected(self.handshake(self.c.server, cafile=self.cafile()))

    def test_trusted_ca_path(self) -> None:
        capath = certs.make_capath(os.path.join(self.directory, "certs"), self.c.ca)
        self.assertConnected(self.handshake(self.c.server, capath=capath))

    def test_ca_path_without_the_issuer(self) -> None:
        capath = certs.make_capath(os.path.join(self.directory, "certs"), self.c.other_ca)
        message = self.assertRefused(
            self.handshake(self.c.server, capath=capath), TLSVerificationError
        )
        self.assertIn("unable to get local issuer certificate", message)

    def test_one_creator_serves_several_connections(self) -> None:
        creator = ClientTLSCreator(TLSSettings(hostname=HOST, cafile=self.cafile()))
        for _ in range(2):
            self.assertConnected(_Handshake(creator, _Server(self.c.server)))

    def test_unknown_ca(self) -> None:
        message = self.assertRefused(
            self.handshake(self.c.foreign, cafile=self.cafile()), TLSVerificationError
        )
        self.assertTrue(
            message.startswith(
                "certificate verification failed for imap.example.org:"
                " unable to get local issuer certificate"
                " (set SSL_CAfile/SSL_CApath or SSL_verify=NO)"
            ),
            message,
        )
        self.assertIn("issued by CN=some other CA,O=imapsync tests", message)

    def test_unknown_ca_default_store(self) -> None:
        """Without SSL_CAfile/SSL_CApath the system store is used, which
        does not know our test CA."""
        message = self.assertRefused(self.handshake(self.c.server), TLSVerificationError)
        self.assertIn("unable to get local issuer certificate", message)

    def test_self_signed(self) -> None:
        message = self.assertRefused(self.handshake(self.c.self_signed), TLSVerificationError)
        self.assertIn("self-signed certificate (set SSL_CAfile/SSL_CApath", message)

    def test_self_signed_as_its_own_ca(self) -> None:
        """What a test Dovecot does: its self-signed certificate is SSL_CAfile."""
        cafile = self.cafile(self.c.self_signed)
        self.assertConnected(self.handshake(self.c.self_signed, cafile=cafile))
        self.assertConnected(
            self.handshake(self.c.self_signed, hostname="127.0.0.1", cafile=cafile)
        )

    def test_expired(self) -> None:
        message = self.assertRefused(
            self.handshake(self.c.expired, cafile=self.cafile()), TLSVerificationError
        )
        self.assertIn("imap.example.org: certificate has expired;", message)
        self.assertNotIn("SSL_verify=NO", message)

    def test_wrong_hostname(self) -> None:
        result = self.handshake(self.c.other_host, cafile=self.cafile())
        message = self.assertRefused(result, TLSVerificationError)
        self.assertEqual(
            message,
            "certificate does not match hostname imap.example.org:"
            " it is for other.example.org, *.example.net",
        )
        self.assertNotIsInstance(result.client.lost.value, FingerprintMismatchError)

    def test_hostname_case_and_trailing_dot(self) -> None:
        self.assertConnected(
            self.handshake(self.c.server, hostname="IMAP.Example.ORG.", cafile=self.cafile())
        )

    def test_ip_literal_in_san(self) -> None:
        for address in ("127.0.0.1", "::1", "[::1]"):
            self.assertConnected(self.handshake(self.c.ip, hostname=address, cafile=self.cafile()))

    def test_ip_literal_not_in_san(self) -> None:
        message = self.assertRefused(
            self.handshake(self.c.ip, hostname="127.0.0.2", cafile=self.cafile()),
            TLSVerificationError,
        )
        self.assertEqual(
            message, "certificate does not match hostname 127.0.0.2: it is for 127.0.0.1, ::1"
        )

    def test_ip_literal_does_not_match_dns_name(self) -> None:
        self.assertRefused(
            self.handshake(self.c.server, hostname="127.0.0.1", cafile=self.cafile()),
            TLSVerificationError,
        )

    def test_ssl_hostname_is_not_checked(self) -> None:
        """As in interimap, the certificate is checked against the host;
        SSL_hostname is only sent as SNI."""
        server = _Server(self.c.server)
        result = self.handshake(
            self.c.server, server, sni="other.example.org", cafile=self.cafile()
        )
        self.assertConnected(result)
        self.assertEqual(server.server_names, [b"other.example.org"])
        message = self.assertRefused(
            self.handshake(self.c.server, hostname="127.0.0.1", sni=HOST, cafile=self.cafile()),
            TLSVerificationError,
        )
        self.assertEqual(
            message, "certificate does not match hostname 127.0.0.1: it is for imap.example.org"
        )
        message = self.assertRefused(
            self.handshake(self.c.other_host, sni="other.example.org", cafile=self.cafile()),
            TLSVerificationError,
        )
        self.assertIn("certificate does not match hostname imap.example.org:", message)

    def test_ssl_hostname_with_ip_host(self) -> None:
        """An IP host is checked against the certificate's IP addresses,
        whatever SNI is sent."""
        server = _Server(self.c.ip)
        result = self.handshake(
            self.c.ip, server, hostname="127.0.0.1", sni=HOST, cafile=self.cafile()
        )
        self.assertConnected(result)
        self.assertEqual(server.server_names, [HOST.encode("ascii")])

    def test_cn_only_certificate(self) -> None:
        """service-identity >= 24.1 requires a subjectAltName; older ones
        fall back to the common name."""
        result = self.handshake(self.c.cn_only, cafile=self.cafile())
        if _service_identity_requires_san():
            message = self.assertRefused(result, TLSVerificationError)
            self.assertIn("certificate does not match hostname imap.example.org: ", message)
            self.assertIn("(it is for CN=imap.example.org (no subjectAltName))", message)
        else:
            self.assertConnected(result)
            self.flushWarnings()

    def test_verify_off(self) -> None:
        for served in (self.c.foreign, self.c.self_signed, self.c.expired, self.c.other_host):
            self.assertConnected(self.handshake(served, verify=False))


class _FailureRecorder:
    """Stands in for TLSMemoryBIOProtocol: records failVerification calls."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    def failVerification(self, reason: Failure) -> None:
        self.failures.append(reason)


class CallbackRobustnessTests(SynchronousTestCase):
    def test_exception_in_callback(self) -> None:
        """An unexpected error inside the OpenSSL callback is logged and
        fails the connection; it never propagates into OpenSSL."""
        recorder = _FailureRecorder()
        check = _PeerCheck(
            tls_protocol=recorder,  # type: ignore[arg-type]
            name=HOST,
            ip=None,
            verify=True,
            pins=(),
        )
        connection = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        not_a_certificate: Any = object()
        self.assertFalse(check(connection, not_a_certificate, 0, 0, 1))
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        [failure] = recorder.failures
        failure.trap(TLSVerificationError)
        self.assertEqual(
            str(failure.value),
            "internal error while verifying the certificate of imap.example.org",
        )
        # Later calls for the same connection keep failing, without a second report.
        self.assertFalse(check(connection, not_a_certificate, 0, 0, 1))
        self.assertEqual(len(recorder.failures), 1)


class PinningTests(_TLSTestCase):
    def pin(self, served: certs.CertifiedKey, algorithm: str = "sha256") -> str:
        return format_fingerprint(algorithm, spki_fingerprint(served.certificate, algorithm))

    def test_pin_match_verify_off(self) -> None:
        pins = (self.pin(self.c.self_signed),)
        self.assertConnected(self.handshake(self.c.self_signed, verify=False, fingerprints=pins))

    def test_pin_match_verify_on(self) -> None:
        result = self.handshake(
            self.c.server, cafile=self.cafile(), fingerprints=(self.pin(self.c.server),)
        )
        self.assertConnected(result)

    def test_pin_spellings(self) -> None:
        digest = spki_fingerprint(self.c.server.certificate, "sha512")
        pin = "SHA-512$" + ":".join(f"{byte:02X}" for byte in digest)
        bare = spki_fingerprint(self.c.server.certificate).hex().upper()
        for pins in ((pin,), (bare,)):
            self.assertConnected(self.handshake(self.c.server, verify=False, fingerprints=pins))

    def test_one_of_several_pins(self) -> None:
        pins = (
            self.pin(self.c.foreign),
            self.pin(self.c.server, "sha1"),
            self.pin(self.c.other_host, "sha384"),
        )
        self.assertConnected(self.handshake(self.c.server, verify=False, fingerprints=pins))

    def test_pin_mismatch(self) -> None:
        pins = (self.pin(self.c.foreign),)
        for protocol in ("TLSv1.2", "TLSv1.3"):
            result = self.handshake(
                self.c.self_signed,
                verify=False,
                fingerprints=pins,
                protocol_min=protocol,
                protocol_max=protocol,
            )
            message = self.assertRefused(result, FingerprintMismatchError)
            self.assertEqual(
                message,
                f"server key {self.pin(self.c.self_signed)} matches none of the pinned"
                " fingerprints (SSL_fingerprint)",
            )

    def test_pin_mismatch_shows_each_algorithm(self) -> None:
        pins = (self.pin(self.c.foreign), self.pin(self.c.foreign, "sha1"))
        message = self.assertRefused(
            self.handshake(self.c.server, verify=False, fingerprints=pins),
            FingerprintMismatchError,
        )
        expected = self.pin(self.c.server) + " / " + self.pin(self.c.server, "sha1")
        self.assertIn(f"server key {expected} matches none", message)

    def test_pin_mismatch_despite_valid_chain(self) -> None:
        pins = (self.pin(self.c.foreign),)
        self.assertRefused(
            self.handshake(self.c.server, cafile=self.cafile(), fingerprints=pins),
            FingerprintMismatchError,
        )

    def test_pin_reported_before_chain_error(self) -> None:
        pins = (self.pin(self.c.server),)
        self.assertRefused(
            self.handshake(self.c.foreign, cafile=self.cafile(), fingerprints=pins),
            FingerprintMismatchError,
        )

    def test_pin_match_does_not_replace_verification(self) -> None:
        """SSL_fingerprint and SSL_verify are orthogonal: both must pass."""
        for served in (self.c.foreign, self.c.other_host):
            pins = (self.pin(served),)
            self.assertRefused(
                self.handshake(served, cafile=self.cafile(), fingerprints=pins),
                TLSVerificationError,
            )

    def test_pin_mismatch_over_starttls(self) -> None:
        """Application data written before the handshake (as an IMAP client
        does right after STARTTLS) never leaves when the pin fails."""
        result = self.handshake(self.c.server, verify=False, fingerprints=(self.pin(self.c.ip),))
        self.assertRefused(result, FingerprintMismatchError)
        result.client_tls.write(b"a2 LOGIN user secret\r\n")
        self.assertEqual(result.server.received, b"")


class ServerNameIndicationTests(_TLSTestCase):
    def server_names(self, served: certs.CertifiedKey, **settings: object) -> list[object]:
        server = _Server(served)
        self.assertConnected(self.handshake(served, server, verify=False, **settings))
        return list(server.server_names)

    def test_hostname(self) -> None:
        self.assertEqual(self.server_names(self.c.server), [b"imap.example.org"])

    def test_ssl_hostname(self) -> None:
        self.assertEqual(
            self.server_names(self.c.server, hostname="192.0.2.1", sni="mail.example.org"),
            [b"mail.example.org"],
        )

    def test_international_hostname(self) -> None:
        self.assertEqual(
            self.server_names(self.c.server, hostname="bücher.example"),
            [b"xn--bcher-kva.example"],
        )

    def test_international_ssl_hostname(self) -> None:
        self.assertEqual(
            self.server_names(self.c.server, sni="Bücher.example."),
            [b"xn--bcher-kva.example"],
        )

    def test_none_for_ip_literals(self) -> None:
        for address in ("127.0.0.1", "::1", "[::1]", "fe80::1%eth0"):
            self.assertEqual(self.server_names(self.c.ip, hostname=address), [None])
            self.assertEqual(self.server_names(self.c.server, sni=address), [None])

    def test_none_when_empty(self) -> None:
        self.assertEqual(self.server_names(self.c.server, sni=""), [None])

    def test_empty_ssl_hostname_still_checks_host(self) -> None:
        self.assertConnected(self.handshake(self.c.server, sni="", cafile=self.cafile()))
        self.assertRefused(
            self.handshake(self.c.other_host, sni="", cafile=self.cafile()),
            TLSVerificationError,
        )

    def test_ip_literal_ssl_hostname_still_checks_host(self) -> None:
        self.assertConnected(self.handshake(self.c.server, sni="127.0.0.1", cafile=self.cafile()))
        self.assertRefused(
            self.handshake(self.c.ip, sni="127.0.0.1", cafile=self.cafile()),
            TLSVerificationError,
        )


class ProtocolAndCipherTests(_TLSTestCase):
    def test_minimum_version_enforced(self) -> None:
        server = _Server(self.c.server, max_version=SSL.TLS1_2_VERSION)
        result = self.handshake(self.c.server, server, verify=False, protocol_min="TLSv1.3")
        assert result.client.lost is not None
        result.client.lost.trap(SSL.Error)
        self.assertEqual(result.server.received, b"")

    def test_maximum_version(self) -> None:
        result = self.handshake(self.c.server, verify=False, protocol_max="TLSv1.2")
        self.assertConnected(result)
        self.assertEqual(result.connection.get_protocol_version_name(), "TLSv1.2")
        result = self.handshake(self.c.server, verify=False, protocol_min="tlsv1_3")
        self.assertEqual(result.connection.get_protocol_version_name(), "TLSv1.3")

    def test_interimap_names(self) -> None:
        for name in ("TLSv1", "TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3", "tls1.2", "TLSv1_2"):
            ClientTLSCreator(TLSSettings(hostname=HOST, verify=False, protocol_min=name))

    def test_sslv3(self) -> None:
        """OpenSSL 4 dropped SSLv3: naming it is then a configuration error."""
        try:
            ClientTLSCreator(TLSSettings(hostname=HOST, verify=False, protocol_min="SSLv3"))
        except TLSConfigError as e:
            self.assertIn("SSL_protocol_min 'SSLv3' is not supported by OpenSSL ", str(e))

    def test_cipher_list(self) -> None:
        cipher = "ECDHE-ECDSA-AES128-GCM-SHA256"
        result = self.handshake(
            self.c.server, verify=False, protocol_max="TLSv1.2", cipherlist=cipher
        )
        self.assertConnected(result)
        self.assertEqual(result.connection.get_cipher_name(), cipher)

    def test_ciphersuites(self) -> None:
        if not _has_tls13_ciphersuites():
            raise self.skipTest("set_tls13_ciphersuites needs pyOpenSSL 25.2")
        suite = "TLS_CHACHA20_POLY1305_SHA256"
        result = self.handshake(self.c.server, verify=False, ciphersuites=suite)
        self.assertConnected(result)
        self.assertEqual(result.connection.get_cipher_name(), suite)

    def test_ciphersuites_with_verification(self) -> None:
        """The suites are checked without freezing the context, which still
        needs its trust store (pyOpenSSL 26 refuses to change a used context)."""
        if not _has_tls13_ciphersuites():
            raise self.skipTest("set_tls13_ciphersuites needs pyOpenSSL 25.2")
        suites = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:"
        creator = ClientTLSCreator(
            TLSSettings(hostname=HOST, cafile=self.cafile(), ciphersuites=suites)
        )
        for _ in range(2):
            result = _Handshake(creator, _Server(self.c.server))
            self.assertConnected(result)
            self.assertEqual(result.connection.get_protocol_version_name(), "TLSv1.3")
            self.assertEqual(result.connection.get_cipher_name(), "TLS_AES_256_GCM_SHA384")
        # ... and a verification failure is still a verification failure.
        message = self.assertRefused(
            self.handshake(self.c.foreign, cafile=self.cafile(), ciphersuites=suites),
            TLSVerificationError,
        )
        self.assertIn("unable to get local issuer certificate", message)

    def test_empty_ciphersuites(self) -> None:
        """An empty SSL_ciphersuites disables the TLS 1.3 suites, as in
        interimap, and so TLS 1.3: this works with any pyOpenSSL."""
        for settings in (
            {"verify": False},
            {"verify": False, "protocol_max": "TLSv1.3"},
            {"verify": False, "protocol_min": "TLSv1.2"},
            {"cafile": self.cafile()},
        ):
            result = self.handshake(self.c.server, ciphersuites="", **settings)
            self.assertConnected(result)
            self.assertEqual(result.connection.get_protocol_version_name(), "TLSv1.2")


class ConfigErrorTests(_TLSTestCase):
    def assertConfigError(self, *fragments: str, **settings: object) -> None:
        settings.setdefault("hostname", HOST)
        with self.assertRaises(TLSConfigError) as caught:
            ClientTLSCreator(TLSSettings(**settings))  # type: ignore[arg-type]
        for fragment in fragments:
            self.assertIn(fragment, str(caught.exception))

    def test_missing_cafile(self) -> None:
        path = os.path.join(self.directory, "nope.pem")
        self.assertConfigError(
            f"cannot read SSL_CAfile {path!r}: No such file or directory", cafile=path
        )

    def test_cafile_without_certificate(self) -> None:
        path = self.write("junk.pem", b"not a certificate\n")
        self.assertConfigError(f"SSL_CAfile {path!r} holds no usable PEM", cafile=path)

    def test_capath_not_a_directory(self) -> None:
        self.assertConfigError(
            "SSL_CApath '/nonexistent' is not a directory", capath="/nonexistent"
        )

    def test_cafile_ignored_without_verification(self) -> None:
        ClientTLSCreator(TLSSettings(hostname=HOST, verify=False, cafile="/nonexistent"))

    def test_bad_protocol(self) -> None:
        self.assertConfigError("invalid SSL_protocol_min 'TLSv9'", protocol_min="TLSv9")
        self.assertConfigError("invalid SSL_protocol_max 'tls'", protocol_max="tls")

    def test_protocol_min_above_max(self) -> None:
        self.assertConfigError(
            "SSL_protocol_min 'TLSv1.3' is above SSL_protocol_max 'TLSv1.2'",
            protocol_min="TLSv1.3",
            protocol_max="TLSv1.2",
        )

    def test_bad_cipher_list(self) -> None:
        self.assertConfigError(
            "invalid SSL_cipherlist 'NO-SUCH-CIPHER'", cipherlist="NO-SUCH-CIPHER"
        )

    def test_anonymous_ciphers_refused(self) -> None:
        """An anonymous suite would skip the certificate and every check with it."""
        self.assertConfigError("invalid SSL_cipherlist 'aNULL'", cipherlist="aNULL")

    def test_bad_ciphersuites(self) -> None:
        if _has_tls13_ciphersuites():
            self.assertConfigError(
                "unknown TLS 1.3 suite(s) TLS_NO_SUCH",
                ciphersuites="TLS_AES_128_GCM_SHA256:TLS_NO_SUCH",
            )
        else:
            self.assertConfigError(
                "SSL_ciphersuites needs pyOpenSSL 25.2", ciphersuites="TLS_AES_128_GCM_SHA256"
            )

    def test_empty_ciphersuites_with_tls13_floor(self) -> None:
        self.assertConfigError(
            "SSL_ciphersuites is empty, which disables TLS 1.3, the only protocol"
            " SSL_protocol_min 'TLSv1.3' allows",
            ciphersuites="",
            protocol_min="TLSv1.3",
        )

    def test_bad_ssl_hostname(self) -> None:
        self.assertConfigError("invalid host name 'bü..cher'", sni="bü..cher")

    def test_bad_fingerprint(self) -> None:
        self.assertConfigError("invalid SSL_fingerprint 'md4$00'", fingerprints=("md4$00",))

    def test_no_hostname(self) -> None:
        self.assertConfigError("no host name", hostname="")

    def test_config_error_is_value_error(self) -> None:
        self.assertTrue(issubclass(TLSConfigError, ValueError))


_SHA256_HEX = "3c" * 32


class FingerprintTests(SynchronousTestCase):
    def test_default_algorithm(self) -> None:
        self.assertEqual(parse_fingerprint(_SHA256_HEX), ("sha256", bytes([0x3C]) * 32))

    def test_algorithm_and_case(self) -> None:
        self.assertEqual(
            parse_fingerprint("SHA256$" + _SHA256_HEX.upper()), ("sha256", b"\x3c" * 32)
        )
        self.assertEqual(parse_fingerprint("sha1$" + "ab" * 20), ("sha1", b"\xab" * 20))
        self.assertEqual(parse_fingerprint("sha-384$" + "01" * 48), ("sha384", b"\x01" * 48))
        self.assertEqual(parse_fingerprint("sha512$" + "ff" * 64), ("sha512", b"\xff" * 64))
        self.assertEqual(parse_fingerprint("sha224$" + "00" * 28), ("sha224", b"\x00" * 28))
        self.assertEqual(parse_fingerprint("sha3_256$" + "00" * 32), ("sha3-256", b"\x00" * 32))

    def test_colons(self) -> None:
        text = "sha256$" + ":".join(["3C"] * 32)
        self.assertEqual(parse_fingerprint(text), ("sha256", b"\x3c" * 32))

    def assertInvalid(self, text: str, reason: str) -> None:
        with self.assertRaises(TLSConfigError) as caught:
            parse_fingerprint(text)
        self.assertEqual(str(caught.exception), f"invalid SSL_fingerprint {text!r}: {reason}")

    def test_unknown_algorithm(self) -> None:
        self.assertInvalid(
            "md5$" + "00" * 16,
            "unknown digest algorithm 'md5' (use one of sha1, sha224, sha256, sha384,"
            " sha512, sha512-224, sha512-256, sha3-224, sha3-256, sha3-384, sha3-512)",
        )

    def test_missing_algorithm(self) -> None:
        self.assertInvalid("$" + _SHA256_HEX, "no digest algorithm before '$'")

    def test_not_hex(self) -> None:
        self.assertInvalid("sha256$" + "zz" * 32, "the digest must be hexadecimal")
        self.assertInvalid("sha256$", "the digest must be hexadecimal")
        self.assertInvalid("sha256$ab$cd", "the digest must be hexadecimal")

    def test_wrong_length(self) -> None:
        self.assertInvalid("ab" * 20, "a sha256 digest has 64 hex digits, not 40")
        self.assertInvalid("sha1$" + _SHA256_HEX, "a sha1 digest has 40 hex digits, not 64")

    @given(
        st.sampled_from(["sha1", "sha224", "sha256", "sha384", "sha512", "sha3-256"]),
        st.data(),
    )
    def test_format_parse_round_trip(self, algorithm: str, data: st.DataObject) -> None:
        size = len(spki_fingerprint(_Certificates.server.certificate, algorithm))
        digest = data.draw(st.binary(min_size=size, max_size=size))
        self.assertEqual(
            parse_fingerprint(format_fingerprint(algorithm, digest)), (algorithm, digest)
        )

    def test_spki_fingerprint_of_pyopenssl_certificate(self) -> None:
        certificate = _Certificates.server.certificate
        self.assertEqual(
            spki_fingerprint(crypto.X509.from_cryptography(certificate), "sha384"),
            spki_fingerprint(certificate, "sha384"),
        )

    def test_spki_fingerprint_ignores_everything_but_the_key(self) -> None:
        """A renewed certificate for the same key keeps its pin."""
        key = certs.make_key()
        first = _Certificates.ca.issue([HOST], key=key)
        renewed = _Certificates.other_ca.issue(["other.example.org"], key=key)
        self.assertEqual(
            spki_fingerprint(first.certificate), spki_fingerprint(renewed.certificate)
        )
        self.assertNotEqual(
            spki_fingerprint(first.certificate), spki_fingerprint(_Certificates.server.certificate)
        )

    def test_spki_fingerprint_matches_openssl(self) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise self.skipTest("no openssl command to compare with")
        for served in (_Certificates.server, _Certificates.rsa):
            pubkey = subprocess.run(
                [openssl, "x509", "-pubkey", "-noout"],
                input=served.cert_pem,
                capture_output=True,
                check=True,
            ).stdout
            der = subprocess.run(
                [openssl, "pkey", "-pubin", "-outform", "DER"],
                input=pubkey,
                capture_output=True,
                check=True,
            ).stdout
            for algorithm in ("sha256", "sha512"):
                output = subprocess.run(
                    [openssl, "dgst", "-" + algorithm],
                    input=der,
                    capture_output=True,
                    check=True,
                ).stdout
                expected = bytes.fromhex(output.decode("ascii").rsplit("=", 1)[1].strip())
                self.assertEqual(spki_fingerprint(served.certificate, algorithm), expected)


class CertificateHelperTests(_TLSTestCase):
    def test_pem_files(self) -> None:
        files = certs.write_pem_files(self.directory, self.c.server, self.c.ca)
        with open(files.cert, "rb") as f:
            self.assertEqual(f.read(), self.c.server.cert_pem)
        self.assertEqual(os.stat(files.key).st_mode & 0o777, 0o600)
        assert files.ca is not None
        self.assertConnected(self.handshake(self.c.server, cafile=files.ca))

    def test_capath_hash_matches_openssl(self) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise self.skipTest("no openssl command to compare with")
        output = subprocess.run(
            [openssl, "x509", "-hash", "-noout"],
            input=self.c.ca.cert_pem,
            capture_output=True,
            check=True,
        ).stdout
        self.assertEqual(certs.subject_hash(self.c.ca.certificate), output.decode().strip())

    def test_capath_hash_collisions(self) -> None:
        twin = certs.make_ca()  # same subject, so same hash
        capath = certs.make_capath(os.path.join(self.directory, "certs"), self.c.ca, twin)
        prefix = certs.subject_hash(self.c.ca.certificate)
        self.assertEqual(
            sorted(os.listdir(capath)),
            sorted(["ca0.pem", "ca1.pem", prefix + ".0", prefix + ".1"]),
        )
        self.assertConnected(self.handshake(twin.issue([HOST]), capath=capath))

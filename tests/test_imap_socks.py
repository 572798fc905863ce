"""Tests for imapsync.imap.socks: proxy URLs, the SOCKS5 negotiation byte by
byte (in memory), and sessions to a real Dovecot through a SOCKS5 relay."""

from __future__ import annotations

import functools
import ipaddress
import os
import shutil
import struct
import tempfile
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IListeningPort,
    IProtocol,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from imapsync.imap.connect import ServerSettings, open_session
from imapsync.imap.session import AppendMessage, IMAPSession
from imapsync.imap.socks import (
    REPLY_TEXT,
    ProxyError,
    ProxyURL,
    SOCKS5ClientEndpoint,
    parse_proxy_url,
)
from imapsync.imap.tls import TLSSettings
from tests import certs
from tests.dovecot import DovecotDaemon, make_message, require_dovecot

DESTINATION = "imap.example.org"
# Written literally in proxy URLs: ":" and "@" in it, "%" kept, UTF-8 kept.
PASSWORD = "pa:ss@w/rd%40\u00e9"

NO_AUTH_GREETING = b"\x05\x01\x00"
USER_PASS_GREETING = b"\x05\x02\x00\x02"
# CONNECT imap.example.org:993 by name (socks5h).
CONNECT_BY_NAME = b"\x05\x01\x00\x03\x10imap.example.org\x03\xe1"
CONNECTION_DONE = Failure(ConnectionDone())
SUCCESS_IPV4 = b"\x05\x00\x00\x01\x0a\x00\x00\x01\x9c\x40"


# -- proxy URLs -------------------------------------------------------------


class ParseProxyURLTests(SynchronousTestCase):
    def test_host_only(self) -> None:
        self.assertEqual(
            parse_proxy_url("socks5h://proxy.example.net"),
            ProxyURL("socks5h", "proxy.example.net", 1080, None, None),
        )

    def test_full(self) -> None:
        url = parse_proxy_url("socks5://alice:secret@10.0.0.1:9050")
        self.assertEqual(url, ProxyURL("socks5", "10.0.0.1", 9050, "alice", "secret"))
        self.assertFalse(url.resolve_remotely)
        self.assertTrue(parse_proxy_url("socks5h://h").resolve_remotely)

    def test_ipv6(self) -> None:
        url = parse_proxy_url("socks5h://u:p@[::1]:1081")
        self.assertEqual((url.host, url.port), ("::1", 1081))
        self.assertEqual(url.address, "[::1]:1081")
        self.assertEqual(parse_proxy_url("socks5h://[2001:db8::2]").port, 1080)

    def test_credentials_taken_literally(self) -> None:
        # As interimap: no percent-decoding, so its configurations keep working.
        url = parse_proxy_url("socks5h://al%40ce:p%3Ass\u00e9@h")
        self.assertEqual((url.username, url.password), ("al%40ce", "p%3Ass\u00e9"))
        # Not even what would be invalid UTF-8 once decoded.
        url = parse_proxy_url("socks5h://%ff:%ff%zz%@h")
        self.assertEqual((url.username, url.password), ("%ff", "%ff%zz%"))
        url = parse_proxy_url("socks5h://b\u00fccher:\u5bc6\u7801\U0001f511@h")
        self.assertEqual((url.username, url.password), ("b\u00fccher", "\u5bc6\u7801\U0001f511"))

    def test_unencoded_at_and_colon_in_password(self) -> None:
        # Split at the last "@" and the first ":", as interimap does.
        url = parse_proxy_url("socks5h://u:a:b@c@h:2")
        self.assertEqual((url.username, url.password, url.host, url.port), ("u", "a:b@c", "h", 2))
        url = parse_proxy_url("socks5://u::@@[2001:db8::1]:3")
        self.assertEqual(
            (url.username, url.password, url.host, url.port), ("u", ":@", "2001:db8::1", 3)
        )
        # What a URL would take as a path, query, fragment or IPv6 brackets.
        url = parse_proxy_url("socks5h://u:/p?a#s[s]w:0rd@h/")
        self.assertEqual((url.password, url.host, url.port), ("/p?a#s[s]w:0rd", "h", 1080))

    def test_user_name_ends_at_the_first_colon(self) -> None:
        # A user name cannot hold ":"; an "@" before the first ":" is its own.
        url = parse_proxy_url("socks5h://a@b:c@h")
        self.assertEqual((url.username, url.password, url.host), ("a@b", "c", "h"))
        url = parse_proxy_url("socks5h://a@b@h")
        self.assertEqual((url.username, url.password, url.host), ("a@b", None, "h"))

    def test_empty_password(self) -> None:
        url = parse_proxy_url("socks5h://u:@h")
        self.assertEqual((url.username, url.password), ("u", ""))

    def test_user_without_password(self) -> None:
        url = parse_proxy_url("socks5h://u@h")
        self.assertEqual((url.username, url.password), ("u", None))

    def test_scheme_case_and_trailing_slash(self) -> None:
        self.assertEqual(parse_proxy_url("SOCKS5H://h:7/"), ProxyURL("socks5h", "h", 7))

    def test_repr_hides_password(self) -> None:
        url = parse_proxy_url(f"socks5h://u:{PASSWORD}@h")
        self.assertEqual(url.password, PASSWORD)
        self.assertNotIn(PASSWORD, repr(url))
        self.assertNotIn("pa:ss", repr(url))

    def test_errors(self) -> None:
        cases = [
            ("proxy.example.net:1080", "not a proxy URL"),
            ("http://proxy:3128", "unsupported scheme 'http'"),
            ("socks4://proxy", "unsupported scheme 'socks4'"),
            ("socks5h://", "host is missing"),
            ("socks5h://u:p@", "host is missing"),
            ("socks5h://h:0", "port must be a number from 1 to 65535"),
            ("socks5h://h:65536", "port must be a number from 1 to 65535"),
            ("socks5h://h:", "port must be a number"),
            ("socks5h://h:socks", "port must be a number"),
            ("socks5h://::1", "must be in brackets"),
            ("socks5h://[::1", "missing ']'"),
            ("socks5h://[not-an-ip]:1", "not an IP address"),
            ("socks5h://[::1]x", "expected ':port'"),
            ("socks5h://h/path", "host name is not valid"),
            ("socks5h://a b", "host name is not valid"),
            ("socks5h://:p@h", "user name before '@' is empty"),
            ("socks5h://@h", "user name before '@' is empty"),
            ("socks5h://:p:q@r@h", "user name before '@' is empty"),
            ("socks5h://h\n", "control characters"),
            ("socks5h://u:p\x00@h", "control characters"),
            ("socks5h://u\t:p@h", "control characters"),
            ("socks5h://u:p\r\n@h", "control characters"),
            ("socks5h://u:p\x7f@h", "control characters"),
            ("socks5h://u:p@ss@h:x", "port must be a number"),
            (f"socks5h://{'u' * 256}:p@h", "user name must be 1 to 255 bytes"),
            (f"socks5h://u:{'p' * 256}@h", "password must be at most 255 bytes"),
            # Bytes, not characters; "%" counts as itself.
            ("socks5h://" + "\u00e9" * 128 + ":p@h", "user name must be 1 to 255 bytes"),
            (f"socks5h://u:{'%41' * 86}@h", "password must be at most 255 bytes"),
        ]
        for text, message in cases:
            with self.assertRaises(ValueError, msg=text) as raised:
                parse_proxy_url(text)
            self.assertIn(message, str(raised.exception), text)

    def test_errors_never_quote_the_password(self) -> None:
        secret = "Sup3rSecret"
        for text in (
            f"u:{secret}@socks5h://h",
            f"socks5h://u:{secret}/h",
            f"socks5h://u:{secret}@h:port",
            f"socks5h://u:{secret}@[h]",
            f"socks5h://u:{secret}@h/x y",
            f"ftp://u:{secret}@h",
            f"socks5h://u:{secret}\n@h",
            f"socks5h://u:{secret}@h\x00",
            f"socks5h://u:{secret}:@{secret}@h:99999",
            f"socks5h://u:{secret}@ss@",
            f"socks5h://u:{secret}{'x' * 255}@h",
            # Not encodable in UTF-8, so not sendable (a lone surrogate).
            f"socks5h://u:{secret}\udcff@h",
        ):
            with self.assertRaises(ValueError, msg=text) as raised:
                parse_proxy_url(text)
            self.assertNotIn(secret, str(raised.exception), text)

    @given(
        scheme=st.sampled_from(["socks5", "socks5h"]),
        # Anything but ":" (it ends the user name) and control characters;
        # "@" and "%" included, kept as written.
        username=st.text(
            st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=":")
            | st.sampled_from("@%"),
            min_size=1,
            max_size=60,
        ),
        password=st.none()
        | st.text(
            st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from(":@%/[]"),
            max_size=60,
        ),
        host=st.sampled_from(["proxy", "proxy.example.net", "10.1.2.3", "[::1]", "[fe80::2]"]),
        port=st.none() | st.integers(1, 65535),
    )
    def test_round_trip(
        self,
        scheme: str,
        username: str,
        password: Optional[str],
        host: str,
        port: Optional[int],
    ) -> None:
        userinfo = username if password is None else f"{username}:{password}"
        text = f"{scheme}://{userinfo}@{host}" + ("" if port is None else f":{port}")
        url = parse_proxy_url(text)
        self.assertEqual(
            url,
            ProxyURL(scheme, host.strip("[]"), port or 1080, username, password),
        )


# -- in-memory fakes ----------------------------------------------------------


@implementer(IHostResolution)
class FakeResolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        raise NotImplementedError("resolutions cannot be cancelled")


@implementer(IHostnameResolver)
class FakeResolver:
    """Answers from a table, synchronously; or never, for names in ``hang``."""

    def __init__(self, answers: Dict[str, List[IAddress]], hang: Sequence[str] = ()) -> None:
        self.answers = answers
        self.hang = hang
        self.queries: List[Tuple[str, int]] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Optional[Sequence[type]] = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        self.queries.append((hostName, portNumber))
        resolution = FakeResolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        if hostName in self.hang:
            return resolution
        answers = self.answers.get(hostName, [])
        if not answers and ":" in hostName:
            answers = [IPv6Address("TCP", hostName, portNumber)]
        elif not answers and hostName[-1:].isdigit():
            answers = [IPv4Address("TCP", hostName, portNumber)]
        for address in answers:
            resolutionReceiver.addressResolved(address)
        resolutionReceiver.resolutionComplete()
        return resolution


@implementer(IReactorPluggableNameResolver)
class ResolvingMemoryReactor(MemoryReactorClock):
    """MemoryReactorClock with our resolver (Twisted 22.4's has none)."""

    def __init__(self, resolver: FakeResolver) -> None:
        super().__init__()
        self.nameResolver = resolver

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        old, self.nameResolver = self.nameResolver, resolver
        return old


class App(Protocol):
    """The application protocol behind the proxy: records what it sees."""

    def __init__(self) -> None:
        self.received = b""
        self.made = False
        self.lost: Optional[Failure] = None

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        self.lost = reason


class AppFactory(Factory):
    def __init__(self) -> None:
        self.addresses: List[IAddress] = []

    def buildProtocol(self, addr: IAddress) -> App:
        self.addresses.append(addr)
        return App()


class FakesTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        resolver = FakeResolver({})
        self.assertTrue(verifyObject(IHostnameResolver, resolver))
        self.assertTrue(verifyObject(IHostResolution, FakeResolution("x")))
        self.assertTrue(
            verifyObject(IReactorPluggableNameResolver, ResolvingMemoryReactor(resolver))
        )


# -- the negotiation, byte by byte ----------------------------------------------


class NegotiationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.resolver = FakeResolver(
            {
                DESTINATION: [
                    IPv6Address("TCP", "2001:db8::7", 993),
                    IPv4Address("TCP", "192.0.2.7", 993),
                ],
                "v4.example.org": [IPv4Address("TCP", "192.0.2.8", 993)],
            },
            hang=["slow.example.org"],
        )
        self.reactor = ResolvingMemoryReactor(self.resolver)
        self.app_factory = AppFactory()

    def endpoint(self, host: str = DESTINATION, port: int = 993, **kwargs: Any) -> Any:
        proxy = TCP4ClientEndpoint(self.reactor, "192.0.2.1", 1080)
        return SOCKS5ClientEndpoint(proxy, host, port, reactor=self.reactor, **kwargs)

    def connect(self, **kwargs: Any) -> Tuple[Deferred[IProtocol], StringTransport, IProtocol]:
        """Start connecting; accept the TCP connection to the proxy in memory."""
        d = self.endpoint(**kwargs).connect(self.app_factory)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port), ("192.0.2.1", 1080))
        proxy_side = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        proxy_side.makeConnection(transport)
        return d, transport, proxy_side

    def exchange(self, protocol: IProtocol, transport: StringTransport, reply: bytes) -> bytes:
        """Deliver ``reply`` one byte at a time; only the last byte may get an answer."""
        for byte in reply[:-1]:
            protocol.dataReceived(bytes([byte]))
            self.assertEqual(transport.value(), b"")
        protocol.dataReceived(reply[-1:])
        sent = transport.value()
        transport.clear()
        return bytes(sent)

    def assert_proxy_error(self, d: Deferred[IProtocol], transport: StringTransport) -> ProxyError:
        error = self.failureResultOf(d, ProxyError).value
        assert isinstance(error, ProxyError)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.app_factory.addresses, [])
        return error

    def test_no_auth(self) -> None:
        d, transport, proxy = self.connect()
        self.assertEqual(transport.value(), NO_AUTH_GREETING)
        transport.clear()
        self.assertEqual(self.exchange(proxy, transport, b"\x05\x00"), CONNECT_BY_NAME)
        self.assertNoResult(d)
        greeting = b"* OK IMAP4rev1 ready\r\n"
        # The CONNECT reply and the server's first bytes in one segment.
        proxy.dataReceived(SUCCESS_IPV4 + greeting)
        app = self.successResultOf(d)
        assert isinstance(app, App)
        self.assertTrue(app.made)
        self.assertEqual(app.received, greeting)
        self.assertIs(app.transport, transport)
        self.assertEqual(self.app_factory.addresses, [HostnameAddress(DESTINATION.encode(), 993)])
        # From now on, bytes pass through untouched both ways.
        proxy.dataReceived(b"\x05\x00more")
        self.assertEqual(app.received, greeting + b"\x05\x00more")
        app.transport.write(b"a1 CAPABILITY\r\n")
        self.assertEqual(transport.value(), b"a1 CAPABILITY\r\n")
        proxy.connectionLost(Failure(ConnectionDone()))
        assert app.lost is not None
        self.assertTrue(app.lost.check(ConnectionDone))
        # The negotiation timeout no longer applies.
        self.reactor.advance(3600)
        self.assertFalse(transport.disconnecting)

    def test_user_password(self) -> None:
        d, transport, proxy = self.connect(username="alice", password="s\u00e9cret")
        self.assertEqual(transport.value(), USER_PASS_GREETING)
        transport.clear()
        self.assertEqual(
            self.exchange(proxy, transport, b"\x05\x02"),
            b"\x01\x05alice\x07s\xc3\xa9cret",
        )
        self.assertEqual(self.exchange(proxy, transport, b"\x01\x00"), CONNECT_BY_NAME)
        # A reply with a domain name as BND.ADDR, byte by byte.
        reply = b"\x05\x00\x00\x03\x0bproxy.local\x04\x38"
        for byte in reply[:-1]:
            proxy.dataReceived(bytes([byte]))
            self.assertNoResult(d)
        proxy.dataReceived(reply[-1:])
        app = self.successResultOf(d)
        assert isinstance(app, App)
        self.assertEqual(app.received, b"")
        self.assertEqual(transport.value(), b"")

    def test_user_without_password_sends_empty_password(self) -> None:
        d, transport, proxy = self.connect(username="alice")
        transport.clear()
        self.assertEqual(self.exchange(proxy, transport, b"\x05\x02"), b"\x01\x05alice\x00")

    def test_proxy_may_skip_authentication(self) -> None:
        d, transport, proxy = self.connect(username="alice", password="x")
        transport.clear()
        self.assertEqual(self.exchange(proxy, transport, b"\x05\x00"), CONNECT_BY_NAME)

    def test_ipv6_bound_address(self) -> None:
        d, transport, proxy = self.connect()
        proxy.dataReceived(b"\x05\x00")
        reply = b"\x05\x00\x00\x04" + ipaddress.IPv6Address("2001:db8::1").packed + b"\x00\x50"
        proxy.dataReceived(reply[:-1])
        self.assertNoResult(d)
        proxy.dataReceived(reply[-1:] + b"x")
        app = self.successResultOf(d)
        assert isinstance(app, App)
        self.assertEqual(app.received, b"x")

    def test_authentication_rejected(self) -> None:
        d, transport, proxy = self.connect(username="alice", password=PASSWORD)
        proxy.dataReceived(b"\x05\x02")
        self.assertIn(PASSWORD.encode(), transport.value())
        transport.clear()
        proxy.dataReceived(b"\x01\x01")
        error = self.assert_proxy_error(d, transport)
        self.assertEqual(str(error), "authentication rejected by the proxy")
        self.assertEqual(transport.value(), b"")

    def test_connect_failure_replies(self) -> None:
        for code, text in [*REPLY_TEXT.items(), (0x42, "unknown SOCKS5 reply code 0x42")]:
            self.reactor.tcpClients.clear()
            d, transport, proxy = self.connect()
            proxy.dataReceived(b"\x05\x00")
            transport.clear()
            proxy.dataReceived(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]))
            error = self.assert_proxy_error(d, transport)
            self.assertEqual(
                str(error), f"the proxy could not connect to {DESTINATION}:993: {text}"
            )
            self.assertEqual(error.code, code)
        self.reactor.tcpClients.clear()
        d, transport, proxy = self.connect(host="2001:db8::3")
        proxy.dataReceived(b"\x05\x00\x05\x04")
        self.assertEqual(
            str(self.assert_proxy_error(d, transport)),
            "the proxy could not connect to [2001:db8::3]:993: host unreachable",
        )
        self.assertIn("connection refused by destination host", REPLY_TEXT.values())
        self.assertEqual(REPLY_TEXT[1], "general SOCKS server failure")

    def test_failure_reply_truncated(self) -> None:
        # Some proxies send only VER and REP before closing: that is enough.
        d, transport, proxy = self.connect()
        proxy.dataReceived(b"\x05\x00")
        proxy.dataReceived(b"\x05")
        self.assertNoResult(d)
        proxy.dataReceived(b"\x05")
        self.assertEqual(self.assert_proxy_error(d, transport).code, 5)

    def test_no_acceptable_method(self) -> None:
        d, transport, proxy = self.connect()
        proxy.dataReceived(b"\x05\xff")
        error = self.assert_proxy_error(d, transport)
        self.assertEqual(
            str(error),
            "the proxy accepts none of the offered authentication methods "
            "(no authentication); it may need a user name and password",
        )

    def test_no_acceptable_method_with_credentials(self) -> None:
        d, transport, proxy = self.connect(username="u", password=PASSWORD)
        proxy.dataReceived(b"\x05\xff")
        error = self.assert_proxy_error(d, transport)
        self.assertIn("(no authentication, username/password)", str(error))

    def test_method_not_offered(self) -> None:
        # User/password chosen though we offered none; then GSSAPI.
        for kwargs, method, name in [
            ({}, 2, "username/password"),
            ({"username": "u"}, 1, "GSSAPI"),
        ]:
            self.reactor.tcpClients.clear()
            d, transport, proxy = self.connect(**kwargs)
            transport.clear()
            proxy.dataReceived(bytes([5, method]))
            error = self.assert_proxy_error(d, transport)
            self.assertIn(f"method that was not offered: 0x{method:02x} ({name})", str(error))
            self.assertEqual(transport.value(), b"")

    def test_not_socks5(self) -> None:
        d, transport, proxy = self.connect()
        proxy.dataReceived(b"HTTP/1.1 400 Bad Request\r\n")
        error = self.assert_proxy_error(d, transport)
        self.assertEqual(str(error), "the proxy does not speak SOCKS5 (it answered version 72)")

    def test_bad_address_type_in_reply(self) -> None:
        d, transport, proxy = self.connect()
        proxy.dataReceived(b"\x05\x00")
        proxy.dataReceived(b"\x05\x00\x00\x07\x00")
        self.assertIn("address type 0x07", str(self.assert_proxy_error(d, transport)))

    def test_proxy_closes_during_negotiation(self) -> None:
        d, transport, proxy = self.connect(username="u", password=PASSWORD)
        proxy.dataReceived(b"\x05\x02\x01")
        proxy.connectionLost(Failure(ConnectionDone()))
        error = self.failureResultOf(d, ProxyError).value
        self.assertEqual(
            str(error), "the proxy closed the connection during the SOCKS5 negotiation"
        )
        self.assertEqual(self.app_factory.addresses, [])

    def test_timeout(self) -> None:
        d, transport, proxy = self.connect(timeout=30)
        proxy.dataReceived(b"\x05\x00\x05\x00\x00")
        self.reactor.advance(29.9)
        self.assertNoResult(d)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.1)
        error = self.assert_proxy_error(d, transport)
        self.assertEqual(str(error), "no connection through the SOCKS5 proxy within 30 seconds")
        # Late bytes from the proxy change nothing.
        proxy.dataReceived(b"\x01\x00\x00\x00\x00\x00\x00")
        self.assertEqual(self.app_factory.addresses, [])

    def test_timeout_default(self) -> None:
        d, transport, proxy = self.connect()
        self.reactor.advance(29)
        self.assertNoResult(d)
        self.reactor.advance(1)
        self.assert_proxy_error(d, transport)

    def test_timeout_reaching_the_proxy(self) -> None:
        d = self.endpoint(timeout=5).connect(self.app_factory)
        self.reactor.advance(5)
        error = self.failureResultOf(d, ProxyError).value
        self.assertIn("within 5 seconds", str(error))

    def test_timeout_resolving(self) -> None:
        d = self.endpoint("slow.example.org", resolve_remotely=False, timeout=5).connect(
            self.app_factory
        )
        self.reactor.advance(5)
        self.failureResultOf(d, ProxyError)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_cancel(self) -> None:
        d, transport, proxy = self.connect()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(transport.disconnecting)
        proxy.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(60)

    def test_proxy_unreachable(self) -> None:
        d = self.endpoint().connect(self.app_factory)
        _, _, factory, _, _ = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        error = self.failureResultOf(d, ProxyError).value
        self.assertIn("cannot connect to the SOCKS5 proxy: Connection was refused", str(error))

    def test_resolved_locally(self) -> None:
        # socks5: the first address of the resolver goes in the CONNECT.
        d, transport, proxy = self.connect(resolve_remotely=False)
        self.assertEqual(self.resolver.queries, [(DESTINATION, 993)])
        transport.clear()
        proxy.dataReceived(b"\x05\x00")
        self.assertEqual(
            transport.value(),
            b"\x05\x01\x00\x04" + ipaddress.IPv6Address("2001:db8::7").packed + b"\x03\xe1",
        )
        proxy.dataReceived(SUCCESS_IPV4)
        self.successResultOf(d)
        # The application still knows the name it asked for (TLS checks it).
        self.assertEqual(self.app_factory.addresses, [HostnameAddress(DESTINATION.encode(), 993)])

    def test_resolved_locally_ipv4(self) -> None:
        d, transport, proxy = self.connect(host="v4.example.org", resolve_remotely=False)
        transport.clear()
        proxy.dataReceived(b"\x05\x00")
        self.assertEqual(transport.value(), b"\x05\x01\x00\x01\xc0\x00\x02\x08\x03\xe1")

    def test_resolution_fails(self) -> None:
        d = self.endpoint("nowhere.example.org", resolve_remotely=False).connect(self.app_factory)
        error = self.failureResultOf(d, ProxyError).value
        self.assertIn("cannot resolve nowhere.example.org", str(error))
        self.assertIn("socks5h://", str(error))
        self.assertEqual(self.reactor.tcpClients, [])

    def test_ip_literals(self) -> None:
        cases = [
            ("192.0.2.9", b"\x01\xc0\x00\x02\x09"),
            ("::1", b"\x04" + b"\x00" * 15 + b"\x01"),
            ("[2001:db8::5]", b"\x04" + ipaddress.IPv6Address("2001:db8::5").packed),
        ]
        for remotely in (True, False):
            for host, address in cases:
                self.reactor.tcpClients.clear()
                d, transport, proxy = self.connect(host=host, port=143, resolve_remotely=remotely)
                transport.clear()
                proxy.dataReceived(b"\x05\x00")
                self.assertEqual(transport.value(), b"\x05\x01\x00" + address + b"\x00\x8f")
        self.assertEqual(self.resolver.queries, [])

    def test_idna_host(self) -> None:
        d, transport, proxy = self.connect(host="b\u00fccher.example", port=143)
        transport.clear()
        proxy.dataReceived(b"\x05\x00")
        name = b"xn--bcher-kva.example"
        self.assertEqual(
            transport.value(), b"\x05\x01\x00\x03" + bytes([len(name)]) + name + b"\x00\x8f"
        )

    def test_bad_arguments(self) -> None:
        for kwargs, message in [
            ({"host": "x" * 256}, "1 to 255 bytes"),
            ({"port": 0}, "port 0"),
            ({"username": "u" * 256}, "user name must be 1 to 255 bytes"),
            ({"username": ""}, "user name must be 1 to 255 bytes"),
            ({"username": "u", "password": "p" * 256}, "at most 255 bytes"),
            ({"password": "p"}, "a password needs a user name"),
        ]:
            with self.assertRaises(ValueError) as raised:
                self.endpoint(**kwargs)
            self.assertIn(message, str(raised.exception))

    def test_repr_hides_password(self) -> None:
        endpoint = self.endpoint(username="alice", password=PASSWORD)
        self.assertTrue(verifyObject(IStreamClientEndpoint, endpoint))
        self.assertIn("alice", repr(endpoint))
        self.assertNotIn(PASSWORD, repr(endpoint))
        settings = ServerSettings(proxy=f"socks5h://u:{PASSWORD}@h")
        self.assertNotIn("socks5h", repr(settings))
        self.assertNotIn("pa:ss", repr(settings))


# -- open_session with a proxy, in memory ------------------------------------


class OpenSessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = ResolvingMemoryReactor(FakeResolver({}))

    def open(self, **kwargs: Any) -> Deferred[IMAPSession]:
        settings = ServerSettings(
            type="imap", host=DESTINATION, starttls=False, timeout=10, **kwargs
        )
        return Deferred.fromCoroutine(open_session(self.reactor, settings))

    def test_connects_through_the_proxy(self) -> None:
        # The password as written, with ":", "@", "%" and UTF-8 in it.
        d = self.open(proxy=f"socks5h://alice:{PASSWORD}@192.0.2.1:1081")
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port), ("192.0.2.1", 1081))
        proxy = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        proxy.makeConnection(transport)
        self.assertEqual(transport.value(), USER_PASS_GREETING)
        transport.clear()
        proxy.dataReceived(b"\x05\x02")
        secret = PASSWORD.encode("utf-8")
        self.assertEqual(secret, b"pa:ss@w/rd%40\xc3\xa9")
        self.assertEqual(transport.value(), b"\x01\x05alice" + bytes([len(secret)]) + secret)
        transport.clear()
        proxy.dataReceived(b"\x01\x00")
        self.assertEqual(transport.value(), b"\x05\x01\x00\x03\x10imap.example.org\x00\x8f")
        transport.clear()
        proxy.dataReceived(SUCCESS_IPV4 + b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n")
        session = self.successResultOf(d)
        self.assertIs(session.protocol.transport, transport)
        self.assertEqual(transport.value(), b"")

    def test_proxy_error_names_both_ends(self) -> None:
        d = self.open(proxy="socks5h://u:Sup3rSecret@[2001:db8::1]")
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port), ("2001:db8::1", 1080))
        proxy = factory.buildProtocol(IPv6Address("TCP", host, port))
        proxy.makeConnection(StringTransport())
        proxy.dataReceived(b"\x05\x02\x01\x01")
        error = self.failureResultOf(d, ProxyError).value
        self.assertEqual(
            str(error),
            "cannot connect to imap.example.org:143 through the SOCKS5 proxy "
            "[2001:db8::1]:1080: authentication rejected by the proxy",
        )

    def test_proxy_with_tunnel_is_refused(self) -> None:
        settings = ServerSettings(type="tunnel", command="true", proxy="socks5h://h")
        d = Deferred.fromCoroutine(open_session(self.reactor, settings))
        error = self.failureResultOf(d, ValueError).value
        self.assertIn("proxy cannot be used with type=tunnel", str(error))
        self.assertEqual(self.reactor.tcpClients, [])

    def test_bad_proxy_url_fails_before_connecting(self) -> None:
        d = self.open(proxy="http://proxy:3128")
        self.failureResultOf(d, ValueError)
        self.assertEqual(self.reactor.tcpClients, [])


# -- a real SOCKS5 relay in front of a real Dovecot ------------------------------


class RelayState:
    """What the fake proxy saw, and its live connections (to close them)."""

    def __init__(self, username: bytes, password: bytes) -> None:
        self.credentials = (username, password)
        self.connections = 0
        self.requests: List[Tuple[int, bytes, int]] = []
        self.upstream_connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.live: List[Protocol] = []
        self.closed: List[Deferred[None]] = []


class _Upstream(Protocol):
    def __init__(self, client: FakeSOCKS5Server) -> None:
        self.client = client
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.client.upstream_made(self)

    def dataReceived(self, data: bytes) -> None:
        self.client.state.bytes_down += len(data)
        assert self.client.transport is not None
        self.client.transport.write(data)

    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        if self.client.transport is not None:
            self.client.transport.loseConnection()
        self.closed.callback(None)


class FakeSOCKS5Server(Protocol):
    """Just enough of an RFC 1928/1929 server: user/password required,
    CONNECT to a loopback destination only (always 127.0.0.1, where the
    test Dovecot listens), then a relay that counts bytes."""

    def __init__(self, state: RelayState) -> None:
        self.state = state
        self.buffer = b""
        self.step = "greeting"
        self.upstream: Optional[_Upstream] = None
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.state.connections += 1
        self.state.live.append(self)
        self.state.closed.append(self.closed)

    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        self.state.live.remove(self)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.loseConnection()
        self.closed.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if self.step == "relay":
            assert self.upstream is not None and self.upstream.transport is not None
            self.state.bytes_up += len(data)
            self.upstream.transport.write(data)
            return
        self.buffer += data
        while self.step != "relay" and self.buffer:
            if not self.advance():
                return

    def reply(self, data: bytes, close: bool = False) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if close:
            self.step = "closed"
            self.transport.loseConnection()

    def advance(self) -> bool:
        b = self.buffer
        if self.step == "greeting":
            if len(b) < 2 or len(b) < 2 + b[1]:
                return False
            methods, self.buffer = b[2 : 2 + b[1]], b[2 + b[1] :]
            if b[0] != 5 or 2 not in methods:
                self.reply(b"\x05\xff", close=True)
                return False
            self.reply(b"\x05\x02")
            self.step = "auth"
        elif self.step == "auth":
            if len(b) < 2 or len(b) < 3 + b[1] or len(b) < 3 + b[1] + b[2 + b[1]]:
                return False
            ulen = b[1]
            plen = b[2 + ulen]
            username, password = b[2 : 2 + ulen], b[3 + ulen : 3 + ulen + plen]
            self.buffer = b[3 + ulen + plen :]
            if (username, password) != self.state.credentials:
                self.reply(b"\x01\x01", close=True)
                return False
            self.reply(b"\x01\x00")
            self.step = "request"
        elif self.step == "request":
            if len(b) < 5:
                return False
            size = {1: 4, 4: 16, 3: 1 + b[4]}[b[3]]
            if len(b) < 4 + size + 2:
                return False
            address = b[5 : 4 + size] if b[3] == 3 else b[4 : 4 + size]
            (port,) = struct.unpack("!H", b[4 + size : 6 + size])
            self.buffer = b[6 + size :]
            self.state.requests.append((b[3], address, port))
            self.step = "connecting"
            if not self.allowed(b[3], address):
                self.reply(b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00", close=True)
                return False
            assert self.transport is not None
            self.transport.pauseProducing()
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
            connecting = connectProtocol(endpoint, _Upstream(self))
            connecting.addErrback(lambda _: self.reply(b"\x05\x05\x00\x01" + bytes(6), True))
        return self.step not in ("connecting", "closed")

    @staticmethod
    def allowed(atyp: int, address: bytes) -> bool:
        if atyp == 3:
            return address == b"localhost"
        return ipaddress.ip_address(address).is_loopback

    def upstream_made(self, upstream: _Upstream) -> None:
        self.state.upstream_connections += 1
        self.state.live.append(upstream)
        self.state.closed.append(upstream.closed)
        self.upstream = upstream
        if self.step == "closed":
            assert upstream.transport is not None
            upstream.transport.loseConnection()
            return
        self.step = "relay"
        self.reply(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00")
        assert self.transport is not None
        self.transport.resumeProducing()


def async_test(f: Callable[..., Awaitable[None]]) -> Callable[..., Deferred[None]]:
    @functools.wraps(f)
    def wrapper(*args: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(f(*args))  # type: ignore[arg-type]

    return wrapper


class ProxiedDaemonTests(TestCase):
    """imap+STARTTLS and imaps to Dovecot through a SOCKS5 relay on 127.0.0.1."""

    timeout = 60

    def setUp(self) -> None:
        require_dovecot(self)
        tmp = tempfile.mkdtemp(prefix="imapsync-socks-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        self.ca = certs.make_ca()
        server = self.ca.issue(["localhost"], ["127.0.0.1"])
        self.pems = certs.write_pem_files(os.path.join(tmp, "pki"), server, self.ca)
        self.daemon = DovecotDaemon(
            os.path.join(tmp, "d"),
            users={"alice": "s3cret-pass"},
            certificate=server.cert_pem,
            key=server.key_pem,
        )
        self.daemon.start()
        self.addCleanup(self.daemon.stop)
        self.relay = RelayState(b"u", b"p@ss:w/rd")
        factory = ServerFactory.forProtocol(lambda: FakeSOCKS5Server(self.relay))
        self.port: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
            0, factory, interface="127.0.0.1"
        )
        self.addCleanup(self.close_relay)
        self.sessions: List[IMAPSession] = []

    async def _close_relay(self) -> None:
        for session in self.sessions:
            await session.logout()
            closed = session.when_closed()
            closed.addTimeout(15, reactor)
            await closed
        for protocol in list(self.relay.live):
            if protocol.transport is not None:
                protocol.transport.loseConnection()
        everything = DeferredList(list(self.relay.closed), fireOnOneErrback=True)
        everything.addTimeout(10, reactor)
        await everything
        await self.port.stopListening()

    def close_relay(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._close_relay())

    def proxy_url(self, scheme: str = "socks5h", password: str = "p@ss:w/rd") -> str:
        """The relay's URL, the password written literally (":" and "@" in it)."""
        port = self.port.getHost().port  # type: ignore[attr-defined]
        return f"{scheme}://u:{password}@127.0.0.1:{port}"

    def settings(self, **kwargs: Any) -> ServerSettings:
        values: Dict[str, Any] = dict(
            name="remote",
            type="imap",
            host="localhost",
            port=self.daemon.imap_port,
            username="alice",
            password="s3cret-pass",
            tls=TLSSettings(hostname="localhost", cafile=self.pems.ca),
            timeout=20,
            proxy=self.proxy_url(),
        )
        values.update(kwargs)
        return ServerSettings(**values)

    async def open(self, settings: ServerSettings) -> IMAPSession:
        session = await open_session(reactor, settings)
        self.sessions.append(session)
        return session

    def assert_relayed(self, session: IMAPSession) -> None:
        self.assertEqual(self.relay.connections, 1)
        self.assertEqual(self.relay.upstream_connections, 1)
        # Our socket's peer is the proxy, not Dovecot.
        peer = session.protocol.transport.getPeer()
        self.assertEqual(peer.port, self.port.getHost().port)  # type: ignore[attr-defined]
        self.assertGreater(self.relay.bytes_up, 500)
        self.assertGreater(self.relay.bytes_down, 500)

    @async_test
    async def test_starttls_through_proxy(self) -> None:
        session = await self.open(self.settings())
        self.assertIsNotNone(session.protocol.transport.getPeerCertificate())
        listed = await session.list_extended()
        self.assertEqual([m.name for m in listed], [b"INBOX"])
        self.assertEqual(self.relay.requests, [(3, b"localhost", self.daemon.imap_port)])
        self.assert_relayed(session)

    @async_test
    async def test_imaps_through_proxy(self) -> None:
        session = await self.open(self.settings(type="imaps", port=self.daemon.imaps_port))
        self.assertIsNotNone(session.protocol.transport.getPeerCertificate())
        await session.append(
            b"INBOX", [AppendMessage(make_message("via proxy", "through SOCKS5", size=3000))]
        )
        listed = await session.list_extended()
        self.assertEqual([m.name for m in listed], [b"INBOX"])
        self.assertEqual(len(self.daemon.store("alice").messages("INBOX")), 1)
        self.assertEqual(self.relay.requests, [(3, b"localhost", self.daemon.imaps_port)])
        self.assert_relayed(session)

    @async_test
    async def test_socks5_resolves_locally(self) -> None:
        settings = self.settings(
            type="imaps", port=self.daemon.imaps_port, proxy=self.proxy_url("socks5")
        )
        session = await self.open(settings)
        await session.noop()
        [(atyp, address, port)] = self.relay.requests
        self.assertIn(atyp, (1, 4))
        self.assertTrue(ipaddress.ip_address(address).is_loopback)
        self.assertEqual(port, self.daemon.imaps_port)

    @async_test
    async def test_ip_literal(self) -> None:
        settings = self.settings(
            host="127.0.0.1", tls=TLSSettings(hostname="127.0.0.1", cafile=self.pems.ca)
        )
        session = await self.open(settings)
        await session.noop()
        self.assertEqual(self.relay.requests, [(1, b"\x7f\x00\x00\x01", self.daemon.imap_port)])

    @async_test
    async def test_wrong_proxy_password(self) -> None:
        # The right password percent-encoded is a wrong one: it is sent as written.
        for password in ("Wr0ng:Pw@x", "p%40ss%3Aw%2Frd"):
            with self.assertRaises(ProxyError) as raised:
                await open_session(reactor, self.settings(proxy=self.proxy_url(password=password)))
            self.assertIn("authentication rejected by the proxy", str(raised.exception))
            self.assertNotIn(password, str(raised.exception))
        self.assertEqual(self.relay.connections, 2)
        self.assertEqual(self.relay.upstream_connections, 0)

    @async_test
    async def test_destination_refused(self) -> None:
        with self.assertRaises(ProxyError) as raised:
            await open_session(reactor, self.settings(host="127.0.0.1", port=1))
        self.assertIn("connection refused by destination host", str(raised.exception))
        self.assertEqual(raised.exception.code, 5)

    @async_test
    async def test_destination_not_allowed(self) -> None:
        with self.assertRaises(ProxyError) as raised:
            await open_session(reactor, self.settings(host="imap.example.org"))
        self.assertIn("connection not allowed by ruleset", str(raised.exception))
        self.assertEqual(self.relay.upstream_connections, 0)

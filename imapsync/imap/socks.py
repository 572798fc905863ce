# -*- test-case-name: tests.test_imap_socks -*-
"""A SOCKS5 client endpoint (RFC 1928, RFC 1929 user/password) and proxy URLs.

`SOCKS5ClientEndpoint` wraps the endpoint that reaches the proxy; the
protocol it connects talks to the destination through the proxy, so TLS
(``wrapClientTLS`` around it, or ``startTLS`` later) runs end to end.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import List, Optional, Tuple, Union

import attrs
from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import (
    IAddress,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IReactorPluggableNameResolver,
    IReactorTime,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsync.imap.errors import IMAPError

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "REPLY_TEXT",
    "ProxyError",
    "ProxyURL",
    "SOCKS5ClientEndpoint",
    "parse_proxy_url",
]

log = Logger()

DEFAULT_PORT = 1080
DEFAULT_TIMEOUT = 30.0

_VERSION = 0x05
_AUTH_VERSION = 0x01
_NO_AUTH = 0x00
_USER_PASS = 0x02
_NO_ACCEPTABLE = 0xFF
_CONNECT = 0x01
_ATYP_IPV4 = 0x01
_ATYP_DOMAIN = 0x03
_ATYP_IPV6 = 0x04

_METHOD_NAMES = {_NO_AUTH: "no authentication", 0x01: "GSSAPI", _USER_PASS: "username/password"}

#: The CONNECT reply codes of RFC 1928, section 6, as text.
REPLY_TEXT = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused by destination host",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}

_URL_FORM = "socks5://[user:password@]host[:port] or socks5h://[user:password@]host[:port]"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_PORT = re.compile(r"[0-9]{1,5}")
# What may not appear in a host name of a URL authority.
_BAD_HOST = re.compile(r"[\s/?#@\[\]\\:%]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ProxyError(IMAPError):
    """The SOCKS5 proxy could not, or would not, make the connection.

    ``code`` is the proxy's reply code to CONNECT when it sent one (see
    `REPLY_TEXT`). The message never contains the password.
    """

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.code = code


@attrs.frozen
class ProxyURL:
    """A parsed ``proxy`` setting; `parse_proxy_url` makes one."""

    scheme: str
    host: str
    port: int = DEFAULT_PORT
    username: Optional[str] = None
    password: Optional[str] = attrs.field(default=None, repr=False)

    @property
    def resolve_remotely(self) -> bool:
        """socks5h: the proxy resolves the destination's name; socks5: we do."""
        return self.scheme == "socks5h"

    @property
    def address(self) -> str:
        """``host:port`` of the proxy for messages (IPv6 in brackets), no credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_proxy_url(text: str) -> ProxyURL:
    """Parse ``socks5[h]://[user:password@]host[:port]``; raise ValueError if malformed.

    User name and password are taken literally, as interimap does (so an
    existing interimap configuration keeps working): the user name ends at
    the first ``:``, the password at the last ``@``.  An IPv6 address goes
    in brackets; the port defaults to 1080.  Error messages quote no part
    of the URL that could hold the password.
    """
    if _CONTROL.search(text):
        raise ValueError("proxy: the URL contains control characters")
    scheme, sep, rest = text.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise ValueError(f"proxy: not a proxy URL; expected {_URL_FORM}")
    scheme = scheme.lower()
    if scheme not in ("socks5", "socks5h"):
        raise ValueError(
            f"proxy: unsupported scheme {scheme!r}; use socks5:// (names resolved locally) "
            "or socks5h:// (names resolved by the proxy)"
        )
    # The last "@": an unencoded "@" in the password still works, as in interimap.
    userinfo, at, hostport = rest.rpartition("@")
    username: Optional[str] = None
    password: Optional[str] = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = user
        if not username:
            raise ValueError("proxy: the user name before '@' is empty")
        if colon:
            password = secret
    if hostport.endswith("/"):
        hostport = hostport[:-1]
    host, port = _split_host_port(hostport)
    _check_credentials(username, password)
    return ProxyURL(scheme, host, port, username, password)


def _split_host_port(hostport: str) -> Tuple[str, int]:
    port_text: Optional[str] = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError("proxy: missing ']' after the IP address")
        host, after = hostport[1:end], hostport[end + 1 :]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError("proxy: what is between '[' and ']' is not an IP address")
        if after:
            if not after.startswith(":"):
                raise ValueError("proxy: expected ':port' after ']'")
            port_text = after[1:]
    else:
        host, colon, rest = hostport.partition(":")
        if ":" in rest:
            raise ValueError(
                "proxy: an IPv6 address must be in brackets, e.g. socks5h://[::1]:1080"
            )
        if colon:
            port_text = rest
        if not host:
            raise ValueError(f"proxy: the proxy host is missing; expected {_URL_FORM}")
        if _BAD_HOST.search(host):
            raise ValueError("proxy: the proxy host name is not valid")
    if port_text is None:
        return host, DEFAULT_PORT
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError("proxy: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _check_credentials(username: Optional[str], password: Optional[str]) -> None:
    """RFC 1929 carries each in 1-255 bytes (we also send an empty password)."""
    if username is None:
        if password is not None:
            raise ValueError("proxy: a password needs a user name")
        return
    if not 1 <= len(username.encode("utf-8")) <= 255:
        raise ValueError("proxy: the user name must be 1 to 255 bytes long (UTF-8)")
    if password is not None and len(password.encode("utf-8")) > 255:
        raise ValueError("proxy: the password must be at most 255 bytes long (UTF-8)")


def _ip_literal(host: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _encode_ip(address: Union[ipaddress.IPv4Address, ipaddress.IPv6Address]) -> bytes:
    atyp = _ATYP_IPV4 if address.version == 4 else _ATYP_IPV6
    return bytes([atyp]) + address.packed


def _ascii_host(host: str) -> bytes:
    try:
        name = host.encode("ascii") if host.isascii() else host.encode("idna")
    except UnicodeError:
        raise ValueError(f"cannot encode the host name {host!r} for the proxy")
    if not 1 <= len(name) <= 255:
        raise ValueError("the host name must be 1 to 255 bytes long for the proxy")
    return name


@implementer(IResolutionReceiver)
class _Resolution:
    """Collect the addresses of one name resolution."""

    def __init__(self) -> None:
        self.addresses: List[IAddress] = []
        self.done: Deferred[List[IAddress]] = Deferred()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


@implementer(IStreamClientEndpoint)
@attrs.frozen
class SOCKS5ClientEndpoint:
    """Connect to ``host:port`` through a SOCKS5 proxy reached by ``proxy_endpoint``.

    With ``resolve_remotely`` (socks5h) the proxy resolves ``host``;
    otherwise it is resolved with ``reactor.nameResolver`` and the first
    address is sent. IP literals are always sent as addresses. ``timeout``
    seconds (on ``reactor``, an IReactorTime) bound the whole connection:
    resolution, reaching the proxy and the negotiation.
    """

    proxy_endpoint: IStreamClientEndpoint
    host: str
    port: int
    username: Optional[str] = None
    password: Optional[str] = attrs.field(default=None, repr=False)
    resolve_remotely: bool = True
    reactor: IReactorTime = attrs.field(kw_only=True, repr=False)
    timeout: float = attrs.field(default=DEFAULT_TIMEOUT, kw_only=True)

    def __attrs_post_init__(self) -> None:
        # Fail on a bad setting before any traffic.
        if not 1 <= self.port <= 65535:
            raise ValueError(f"destination port {self.port} is not from 1 to 65535")
        if _ip_literal(self.host) is None:
            _ascii_host(self.host)
        _check_credentials(self.username, self.password)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Fire with the protocol of ``protocolFactory`` once the proxy has connected."""
        connecting = Deferred.fromCoroutine(self._connect(protocolFactory))
        return connecting.addTimeout(self.timeout, self.reactor, onTimeoutCancel=self._timed_out)

    def _timed_out(
        self, result: Union[IProtocol, Failure], timeout: float
    ) -> Union[IProtocol, Failure]:
        # Twisted's connecting endpoints fail a cancelled attempt with
        # ConnectingCancelledError, the rest with CancelledError.
        if isinstance(result, Failure) and result.check(CancelledError, ConnectingCancelledError):
            return Failure(
                ProxyError(f"no connection through the SOCKS5 proxy within {timeout:g} seconds")
            )
        return result

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        destination = await self._destination()
        credentials: Optional[Tuple[bytes, bytes]] = None
        if self.username is not None:
            credentials = (self.username.encode("utf-8"), (self.password or "").encode("utf-8"))
        literal = _ip_literal(self.host)
        if literal is not None:
            name = literal.compressed.encode("ascii")
            shown = f"[{literal}]" if literal.version == 6 else str(literal)
        else:
            name = _ascii_host(self.host)
            shown = self.host
        negotiation = _SOCKS5Negotiation(
            request=struct.pack("!BBB", _VERSION, _CONNECT, 0)
            + destination
            + struct.pack("!H", self.port),
            credentials=credentials,
            factory=factory,
            address=HostnameAddress(name, self.port),
            destination=f"{shown}:{self.port}",
        )
        try:
            await connectProtocol(self.proxy_endpoint, negotiation)
        except (CancelledError, ConnectingCancelledError):
            raise
        except Exception as e:
            raise ProxyError(f"cannot connect to the SOCKS5 proxy: {e}")
        return await negotiation.done

    async def _destination(self) -> bytes:
        """DST.ADDR with its ATYP: an address, or a name for the proxy to resolve."""
        literal = _ip_literal(self.host)
        if literal is not None:
            return _encode_ip(literal)
        if self.resolve_remotely:
            name = _ascii_host(self.host)
            return bytes([_ATYP_DOMAIN, len(name)]) + name
        resolution = _Resolution()
        IReactorPluggableNameResolver(self.reactor).nameResolver.resolveHostName(
            resolution, self.host, self.port, [IPv4Address, IPv6Address]
        )
        for address in await resolution.done:
            if isinstance(address, (IPv4Address, IPv6Address)):
                return _encode_ip(ipaddress.ip_address(address.host))
        raise ProxyError(
            f"cannot resolve {self.host} (socks5:// resolves names here; "
            "socks5h:// lets the proxy resolve them)"
        )


class _SOCKS5Negotiation(Protocol):
    """Greeting, authentication and CONNECT; then a relay to the real protocol.

    After the CONNECT reply the real protocol gets our transport itself, so
    that ``startTLS`` on it puts TLS under this relay.
    """

    def __init__(
        self,
        *,
        request: bytes,
        credentials: Optional[Tuple[bytes, bytes]],
        factory: IProtocolFactory,
        address: HostnameAddress,
        destination: str,
    ) -> None:
        self.done: Deferred[IProtocol] = Deferred(self._cancel)
        self._request = request
        self._credentials = credentials
        self._factory = factory
        self._address = address
        self._destination = destination
        self._buffer = b""
        self._state = "method"
        self._finished = False
        self._wrapped: Optional[IProtocol] = None

    def __repr__(self) -> str:
        return f"<SOCKS5 negotiation to {self._destination}, {self._state}>"

    def _methods(self) -> bytes:
        return bytes([_NO_AUTH, _USER_PASS] if self._credentials else [_NO_AUTH])

    def connectionMade(self) -> None:
        methods = self._methods()
        self._write(bytes([_VERSION, len(methods)]) + methods)

    def dataReceived(self, data: bytes) -> None:
        if self._wrapped is not None:
            self._wrapped.dataReceived(data)
            return
        if self._finished:
            return
        self._buffer += data
        try:
            self._advance()
        except ProxyError as e:
            self._fail(e)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._wrapped is not None:
            self._wrapped.connectionLost(reason)
            return
        if not self._finished:
            self._finished = True
            self.done.errback(
                ProxyError("the proxy closed the connection during the SOCKS5 negotiation")
            )

    def _advance(self) -> None:
        while not self._finished:
            if self._state == "method":
                if not self._method_reply():
                    return
            elif self._state == "auth":
                if not self._auth_reply():
                    return
            elif not self._connect_reply():
                return

    def _method_reply(self) -> bool:
        if len(self._buffer) < 2:
            return False
        version, method = self._buffer[0], self._buffer[1]
        self._buffer = self._buffer[2:]
        if version != _VERSION:
            raise ProxyError(f"the proxy does not speak SOCKS5 (it answered version {version})")
        offered = ", ".join(_METHOD_NAMES[m] for m in self._methods())
        if method == _NO_ACCEPTABLE:
            hint = "" if self._credentials else "; it may need a user name and password"
            raise ProxyError(
                f"the proxy accepts none of the offered authentication methods ({offered}){hint}"
            )
        if method not in self._methods():
            name = _METHOD_NAMES.get(method, "unknown")
            raise ProxyError(
                f"the proxy chose an authentication method that was not offered: "
                f"0x{method:02x} ({name}); offered: {offered}"
            )
        if method == _USER_PASS:
            assert self._credentials is not None
            username, password = self._credentials
            self._write(
                bytes([_AUTH_VERSION, len(username)])
                + username
                + bytes([len(password)])
                + password
            )
            self._state = "auth"
        else:
            self._send_request()
        return True

    def _auth_reply(self) -> bool:
        if len(self._buffer) < 2:
            return False
        # The version byte is not checked: some proxies answer 5, not 1.
        status = self._buffer[1]
        self._buffer = self._buffer[2:]
        if status != 0:
            raise ProxyError("authentication rejected by the proxy")
        self._send_request()
        return True

    def _send_request(self) -> None:
        self._write(self._request)
        self._state = "reply"

    def _connect_reply(self) -> bool:
        buffer = self._buffer
        if len(buffer) < 2:
            return False
        if buffer[0] != _VERSION:
            raise ProxyError(f"invalid SOCKS5 reply from the proxy (version {buffer[0]})")
        if buffer[1] != 0:
            text = REPLY_TEXT.get(buffer[1], f"unknown SOCKS5 reply code 0x{buffer[1]:02x}")
            raise ProxyError(
                f"the proxy could not connect to {self._destination}: {text}", code=buffer[1]
            )
        if len(buffer) < 5:
            return False
        atyp = buffer[3]
        if atyp == _ATYP_IPV4:
            size = 4 + 4 + 2
        elif atyp == _ATYP_IPV6:
            size = 4 + 16 + 2
        elif atyp == _ATYP_DOMAIN:
            size = 4 + 1 + buffer[4] + 2
        else:
            raise ProxyError(f"invalid SOCKS5 reply from the proxy (address type 0x{atyp:02x})")
        if len(buffer) < size:
            return False
        self._hand_over(buffer[size:])
        return True

    def _hand_over(self, leftover: bytes) -> None:
        self._finished = True
        self._buffer = b""
        try:
            protocol = self._factory.buildProtocol(self._address)
        except BaseException:
            self.done.errback(Failure())
            self._abort()
            return
        if protocol is None:
            self.done.errback(ProxyError("the protocol factory refused the connection"))
            self._abort()
            return
        log.debug("SOCKS5 proxy connected to {destination}", destination=self._destination)
        self._wrapped = protocol
        assert self.transport is not None
        protocol.makeConnection(self.transport)
        self.done.callback(protocol)
        if leftover:
            protocol.dataReceived(leftover)

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def _fail(self, error: ProxyError) -> None:
        self._finished = True
        self.done.errback(error)
        self._abort()

    def _cancel(self, done: Deferred[IProtocol]) -> None:
        self._finished = True
        self._abort()

    def _abort(self) -> None:
        transport = self.transport
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()

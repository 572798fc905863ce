# -*- test-case-name: tests.test_imap_connect -*-
"""Opening an authenticated `IMAPSession`: tunnel, imap (+STARTTLS) or imaps.

The sequence is: transport, greeting, STARTTLS (verified before anything
else is sent), capabilities, authentication, COMPRESS.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
from typing import Any, List, Optional, Tuple

import attrs
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from imapsync._prefix import PrefixLogger
from imapsync.imap._protocol import DEFAULT_TIMEOUT, IMAP4ClientProtocol
from imapsync.imap.errors import ConnectionLostError, IMAPError, ProtocolError
from imapsync.imap.session import IMAPSession
from imapsync.imap.socks import ProxyError, ProxyURL, SOCKS5ClientEndpoint, parse_proxy_url
from imapsync.imap.tls import ClientTLSCreator, TLSSettings

log = PrefixLogger()

# Seconds a tunnel command gets to exit after its stdin is closed, then
# after SIGTERM, before it is killed.
TUNNEL_GRACE = 5.0

_SHELL_META = re.compile(r"[|&;<>()$`\\\"'*?\[\]#~=%{}\n]")


@attrs.frozen
class ServerSettings:
    """How to reach and log in to one server (a ``[local]``/``[remote]`` section)."""

    name: str = "remote"
    type: str = "imaps"
    host: str = "localhost"
    port: Optional[int] = None
    command: Optional[str] = None
    starttls: bool = True
    auth: Tuple[str, ...] = ("PLAIN", "LOGIN")
    username: Optional[str] = attrs.field(default=None, repr=False)
    password: Optional[str] = attrs.field(default=None, repr=False)
    compress: bool = False
    null_stderr: bool = False
    tls: Optional[TLSSettings] = None
    timeout: float = DEFAULT_TIMEOUT
    #: ``socks5://`` or ``socks5h://[user:password@]host[:port]`` (imap, imaps).
    proxy: Optional[str] = attrs.field(default=None, repr=False)

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 993 if self.type == "imaps" else 143


def tunnel_argv(command: str) -> List[str]:
    """The argv for a tunnel: through ``/bin/sh -c`` only when it needs a shell."""
    if _SHELL_META.search(command):
        return ["/bin/sh", "-c", command]
    argv = shlex.split(command)
    if not argv:
        raise ValueError("empty tunnel command")
    return argv


class _TunnelProcess(ProcessProtocol):
    """Glue a child process's stdin/stdout to an IMAP protocol."""

    def __init__(self, protocol: IMAP4ClientProtocol, clock: IReactorTime) -> None:
        self.protocol = protocol
        self.clock = clock
        self.ended: Deferred[None] = Deferred()
        self._kill_calls: List[IDelayedCall] = []
        self._exited = False

    def connectionMade(self) -> None:
        self.protocol.makeConnection(_TunnelTransport(self))

    def outReceived(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def processEnded(self, reason: Failure) -> None:
        self._exited = True
        for call in self._kill_calls:
            if call.active():
                call.cancel()
        if reason.check(ProcessDone):
            why = Failure(ConnectionLostError("tunnel command exited"))
        elif reason.check(ProcessTerminated):
            why = Failure(ConnectionLostError(f"tunnel command ended: {reason.value}"))
        else:
            why = reason
        self.protocol.connectionLost(why)
        self.ended.callback(None)

    def stop(self) -> None:
        """Close stdin, then TERM, then KILL, each after a grace period."""
        if self._exited or self.transport is None or self._kill_calls:
            return
        self.transport.closeStdin()
        self._kill_calls = [
            self.clock.callLater(TUNNEL_GRACE, self._signal, signal.SIGTERM),
            self.clock.callLater(2 * TUNNEL_GRACE, self._signal, signal.SIGKILL),
        ]

    def _signal(self, signum: int) -> None:
        if self._exited or self.transport is None:
            return
        try:
            self.transport.signalProcess(signum)
        except (ProcessExitedAlready, OSError):
            pass


class _TunnelTransport:
    """The ITransport subset the IMAP protocol uses, over a child process."""

    disconnecting = False

    def __init__(self, process: _TunnelProcess) -> None:
        self._process = process

    def write(self, data: bytes) -> None:
        if self._process.transport is not None and not self._process._exited:
            self._process.transport.write(data)

    def writeSequence(self, data: List[bytes]) -> None:
        if self._process.transport is not None and not self._process._exited:
            self._process.transport.writeSequence(data)

    def loseConnection(self) -> None:
        self.disconnecting = True
        self._process.stop()

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._process._signal(signal.SIGTERM)
        self._process.stop()

    def pauseProducing(self) -> None:
        transport: Any = self._process.transport
        if transport is not None:
            transport.pauseProducing()

    def resumeProducing(self) -> None:
        transport: Any = self._process.transport
        if transport is not None:
            transport.resumeProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """The producer writes to the command's stdin, paced by its pipe."""
        transport: Any = self._process.transport
        if transport is not None and not self._process._exited:
            transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        transport: Any = self._process.transport
        if transport is not None:
            transport.unregisterProducer()

    def startTLS(self, creator: Any) -> None:
        raise ProtocolError("STARTTLS is not available over a tunnel")

    def getPeer(self) -> str:
        return "tunnel"

    def getHost(self) -> str:
        return "tunnel"


def _open_tunnel(
    reactor: Any, settings: ServerSettings, protocol: IMAP4ClientProtocol, debug: int = 0
) -> _TunnelProcess:
    if not settings.command:
        raise ValueError("type=tunnel needs a command")
    argv = tunnel_argv(settings.command)
    process = _TunnelProcess(protocol, reactor)
    devnull: Optional[int] = None
    child_fds: dict[int, Any] = {0: "w", 1: "r", 2: 2}
    # With --debug the tunnel's own messages are wanted (as in interimap).
    if settings.null_stderr and not debug:
        devnull = os.open(os.devnull, os.O_WRONLY)
        child_fds[2] = devnull
    try:
        # env=None: the child inherits our environment (doveadm needs USER
        # and HOME; an empty environment makes it exit with status 75).
        reactor.spawnProcess(process, argv[0], argv, env=None, childFDs=child_fds)
    finally:
        if devnull is not None:
            os.close(devnull)
    return process


def _host_for_endpoint(host: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


async def open_session(reactor: Any, settings: ServerSettings, debug: int = 0) -> IMAPSession:
    """Connect, check the server's identity, log in; return the session."""
    protocol = IMAP4ClientProtocol(
        reactor, timeout=settings.timeout, name=settings.name, debug=debug
    )
    creator: Optional[ClientTLSCreator] = None
    if settings.type in ("imap", "imaps") and (settings.type == "imaps" or settings.starttls):
        # Built before connecting: a bad TLS setting fails before any traffic.
        creator = ClientTLSCreator(
            settings.tls or TLSSettings(hostname=_host_for_endpoint(settings.host))
        )
    proxy: Optional[ProxyURL] = None
    if settings.proxy is not None:
        if settings.type == "tunnel":
            raise ValueError(
                "proxy cannot be used with type=tunnel (the tunnel command makes the "
                "connection); remove proxy, or use type=imap or type=imaps"
            )
        proxy = parse_proxy_url(settings.proxy)
    if settings.type == "tunnel":
        _open_tunnel(reactor, settings, protocol, debug)
    elif settings.type in ("imap", "imaps"):
        host = _host_for_endpoint(settings.host)
        if proxy is None:
            endpoint: Any = endpoints.HostnameEndpoint(
                reactor, host, settings.effective_port, timeout=int(settings.timeout)
            )
        else:
            endpoint = SOCKS5ClientEndpoint(
                endpoints.HostnameEndpoint(
                    reactor, proxy.host, proxy.port, timeout=int(settings.timeout)
                ),
                host,
                settings.effective_port,
                proxy.username,
                proxy.password,
                proxy.resolve_remotely,
                reactor=reactor,
                timeout=settings.timeout,
            )
        if settings.type == "imaps":
            assert creator is not None
            endpoint = endpoints.wrapClientTLS(creator, endpoint)
        try:
            await endpoints.connectProtocol(endpoint, protocol)
        except ProxyError as e:
            assert proxy is not None
            raise ProxyError(
                f"cannot connect to {settings.host}:{settings.effective_port} "
                f"through the SOCKS5 proxy {proxy.address}: {e}",
                code=e.code,
            )
        except IMAPError:
            raise
        except Exception as e:
            raise ConnectionLostError(
                f"cannot connect to {settings.host}:{settings.effective_port}: {e}"
            )
    else:
        raise ValueError(f"unknown connection type {settings.type!r}")
    session = IMAPSession(protocol, settings.name)
    try:
        await _setup(reactor, settings, protocol, session, creator)
    except BaseException:
        transport: Any = protocol.transport
        if transport is not None:
            transport.abortConnection()
        # Leave no tunnel process or socket behind.
        closed = protocol.when_closed()
        closed.addTimeout(3 * TUNNEL_GRACE, reactor)
        try:
            await closed
        except Exception:
            log.warn("{prefix}connection did not close in time", server=settings.name)
        raise
    return session


async def _setup(
    reactor: Any,
    settings: ServerSettings,
    protocol: IMAP4ClientProtocol,
    session: IMAPSession,
    creator: Optional[ClientTLSCreator],
) -> None:
    greeting_d = protocol.greeting
    greeting_d.addTimeout(settings.timeout, reactor)
    try:
        greeting = await greeting_d
    except Exception as e:
        if isinstance(e, IMAPError):
            raise
        raise ConnectionLostError(f"no greeting from the server: {e}")
    preauth = greeting.status == b"PREAUTH"
    if settings.type == "imap" and settings.starttls:
        if preauth:
            raise ProtocolError(
                "the server pre-authenticated the connection in clear text, so STARTTLS "
                "is impossible; set STARTTLS=NO to accept an unencrypted connection"
            )
        if not protocol.capabilities:
            await session.capability()
        assert creator is not None
        await session.starttls(creator)
    elif not protocol.capabilities:
        await session.capability()
    if not preauth:
        await session.authenticate(settings.auth, settings.username, settings.password)
    if settings.compress and session.has_capability(b"COMPRESS=DEFLATE"):
        await session.compress()

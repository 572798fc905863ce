# -*- test-case-name: tests.test_watch -*-
"""Live mode: after the first sync, stay connected and follow changes.

Both servers are told once (one ``NOTIFY SET`` per connection: Dovecot 2.3
sends no more events after a second one) to report new messages,
expunges, flag, mailbox and subscription changes.  Dovecot reports nothing
for the selected mailbox, so between passes no mailbox is selected and
every change arrives as a ``STATUS`` event.  Any event starts a pass: both
servers are listed again (LIST-STATUS) and the changed mailboxes synced.
A server without NOTIFY is polled every ``--watch`` seconds.  A lost
connection is opened again with exponential backoff.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, List, Optional

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from imapsync.engine.report import Reporter
from imapsync.engine.sync import Synchronizer, SyncOptions, prepare_session
from imapsync.imap.defer import gather
from imapsync.imap.errors import (
    AuthenticationError,
    CapabilityMissingError,
    IMAPError,
    ProtocolError,
    TLSVerificationError,
)
from imapsync.imap.response import ConditionResponse, ListResponse, Response, StatusResponse
from imapsync.imap.session import close_all, notify_spec
from imapsync.interfaces import IIMAPSession
from imapsync.state import StateStore

log = Logger(namespace="imapsync")

# Seconds without traffic after which a NOOP keeps servers from logging us
# out (the seed: 15 minutes; RFC 3501 servers wait at least 30).
IDLE_NOOP = 15 * 60
# Events come in bursts (a MULTIAPPEND of 100 messages is 100 events):
# wait this long after the first one before a pass.
SETTLE = 0.1
# Reconnection backoff, in seconds.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 600.0

# Errors retrying cannot fix: the configuration or the server must change.
FATAL = (AuthenticationError, TLSVerificationError, CapabilityMissingError, ProtocolError)


class FatalWatchError(Exception):
    """Live mode cannot go on (exit status 1)."""


class TemporaryWatchError(Exception):
    """The servers could not be reached at start (exit status 75: retry later)."""


@attrs.define
class Watcher:
    """Run passes on events until stopped."""

    reactor: Any
    store: StateStore
    reporter: Reporter
    open_session: Callable[[str], Awaitable[IIMAPSession]]
    options: SyncOptions
    # Poll every this many seconds when a server lacks NOTIFY (None: refuse).
    poll: Optional[float] = None
    idle_noop: float = IDLE_NOOP
    stopping: bool = False
    failed_mailboxes: int = 0
    _wake: Optional[Deferred[None]] = None
    _pending: bool = True
    _connections: int = 0
    _done: bool = False
    _stop_waiters: List[Deferred[None]] = attrs.field(factory=list)

    # -- control -----------------------------------------------------------

    def stop(self) -> Deferred[None]:
        """Ask for a stop at the next safe point; fires once stopped."""
        self.stopping = True
        self._poke()
        d: Deferred[None] = Deferred()
        self._stop_waiters.append(d)
        if self._done:
            d.callback(None)
        return d

    def sync_now(self) -> None:
        """Start a pass as soon as possible (SIGHUP)."""
        self._pending = True
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.called:
            wake, self._wake = self._wake, None
            wake.callback(None)

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if poked."""
        wake: Deferred[None] = Deferred()
        self._wake = wake
        timer = self.reactor.callLater(seconds, self._poke)
        try:
            await wake
        finally:
            if timer.active():
                timer.cancel()

    # -- the loop ------------------------------------------------------------

    async def run(self) -> None:
        """Follow changes until `stop`; raise FatalWatchError/TemporaryWatchError."""
        try:
            await self._run()
        finally:
            self._done = True
            waiters, self._stop_waiters = self._stop_waiters, []
            for waiter in waiters:
                if not waiter.called:
                    waiter.callback(None)

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST
        failing = False
        while not self.stopping:
            connections = self._connections
            try:
                await self._connected()
                return
            except FatalWatchError:
                raise
            except FATAL as e:
                raise FatalWatchError(str(e))
            except IMAPError as e:
                if self.stopping:
                    return
                if not self._connections:
                    # Never connected: let the service manager retry later.
                    raise TemporaryWatchError(str(e))
                if self._connections != connections:
                    backoff, failing = BACKOFF_FIRST, False
                # Say it once, not at every attempt.
                # "...closed cleanly.; reconnecting" reads badly.
                error = str(e).rstrip(".")
                if not failing:
                    log.warn("WARNING: {error}; reconnecting", error=error)
                    failing = True
                else:
                    log.debug("still failing: {error}", error=error)
                await self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _connected(self) -> None:
        """One connection's life: open, sync, follow events until lost or stopped."""
        sessions: List[IIMAPSession] = []
        try:
            local, remote = await gather(
                self._open("local", sessions), self._open("remote", sessions)
            )
            if self._connections:
                log.info("reconnected")
            self._connections += 1
            notify = all(s.has_capability(b"NOTIFY") for s in (local, remote))
            if not notify and self.poll is None:
                missing = [s.name for s in (local, remote) if not s.has_capability(b"NOTIFY")]
                raise FatalWatchError(
                    "{} does not support NOTIFY (RFC 5465), needed to follow changes: use "
                    "--watch=SECONDS to poll it, or --oneshot".format(" and ".join(missing))
                )
            lost: List[BaseException] = []

            def on_lost(error: BaseException) -> None:
                lost.append(error)
                self._poke()

            for session in (local, remote):
                session.add_observer(self._on_event)
                session.when_lost().addCallback(on_lost)
            if notify:
                # Once per connection (see the module docstring), before the
                # first pass: a change made during it must raise an event.
                await gather(*(s.notify_set(notify_spec()) for s in (local, remote)))
            self._pending = True
            last = self.reactor.seconds()
            while not self.stopping:
                if lost:
                    error = lost[0]
                    raise error if isinstance(error, IMAPError) else IMAPError(str(error))
                if self._pending:
                    self._pending = False
                    await self._pass(local, remote)
                    last = self.reactor.seconds()
                    continue
                now = self.reactor.seconds()
                next_noop = last + self.idle_noop
                next_poll = last + self.poll if (not notify and self.poll) else float("inf")
                if now >= next_poll:
                    self._pending = True
                    continue
                if now >= next_noop:
                    await gather(local.noop(), remote.noop())
                    last = self.reactor.seconds()
                    continue
                await self._sleep(min(next_noop, next_poll) - now)
                if self._pending and not self.stopping:
                    # Let a burst of events (one per message of a
                    # MULTIAPPEND) settle into one pass.
                    await deferLater(self.reactor, SETTLE)
        finally:
            await close_all(sessions, self.reactor)

    async def _open(self, side: str, sessions: List[IIMAPSession]) -> IIMAPSession:
        session = await self.open_session(side)
        sessions.append(session)
        return await prepare_session(session)

    async def _pass(self, local: IIMAPSession, remote: IIMAPSession) -> None:
        synchronizer = Synchronizer(
            self.store,
            self.reporter,
            self.open_session,
            self.options,
            should_stop=lambda: self.stopping,
            pause=lambda: deferLater(self.reactor, 0),
        )
        failed = await synchronizer.run(primary=(local, remote))
        # Between passes nothing is selected, so that every change is
        # reported as a STATUS event.
        await gather(local.unselect(), remote.unselect())
        self.failed_mailboxes = failed

    def _on_event(self, response: Response) -> None:
        if isinstance(response, (StatusResponse, ListResponse)) or (
            isinstance(response, ConditionResponse)
            and response.code is not None
            and response.code.name == b"NOTIFICATIONOVERFLOW"
        ):
            self._pending = True
            self._poke()

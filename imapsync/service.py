# -*- test-case-name: tests.test_main -*-
"""Running imapsync: logging set-up, the database lock, one run of a command.

Shared by the console script (`imapsync.scripts.main`) and twistd
(`imapsync.tap`).
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger, globalLogBeginner

from imapsync.config import Config
from imapsync.engine.commands import CommandError, delete, rename
from imapsync.engine.listing import SideSpec
from imapsync.engine.mailbox import SyncError
from imapsync.engine.report import Reporter
from imapsync.engine.sync import Synchronizer, SyncOptions
from imapsync.imap.connect import open_session
from imapsync.imap.defer import gather
from imapsync.imap.errors import IMAPError
from imapsync.imap.session import close_all
from imapsync.interfaces import IIMAPSession
from imapsync.options import Options
from imapsync.output import LineObserver, open_logfile
from imapsync.state import DatabaseError, StateStore
from imapsync.watch import IDLE_NOOP

log = Logger(namespace="imapsync")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NO_INPUT = 2
EXIT_TEMPFAIL = 75


def start_logging(config: Config, options: Options) -> LineObserver:
    """Send log events to stderr (and the logfile) as imapsync lines."""
    logfile = open_logfile(config.logfile) if config.logfile else None
    observer = LineObserver(
        sys.stderr,
        logfile,
        prefix=config.log_prefix,
        quiet=options.quiet,
        debug=options.debug,
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    return observer


class _Sessions:
    """Open connections by side name; close them all at the end."""

    def __init__(self, reactor: Any, config: Config, debug: int) -> None:
        self.reactor = reactor
        self.config = config
        self.debug = debug
        self.opened: List[IIMAPSession] = []

    async def open(self, side: str) -> IIMAPSession:
        settings = getattr(self.config, side).server
        session = await open_session(self.reactor, settings, debug=self.debug)
        self.opened.append(session)
        return session

    async def close(self, reporter: Reporter) -> None:
        by_side: Dict[str, List[int]] = {}
        for session in self.opened:
            protocol = getattr(session, "protocol", None)
            if protocol is not None:
                totals = by_side.setdefault(session.name, [0, 0])
                totals[0] += protocol.bytes_received
                totals[1] += protocol.bytes_sent
        await close_all(self.opened, self.reactor)
        for side in ("local", "remote"):
            if side in by_side:
                reporter.summary(side, *by_side[side])


async def run_once(reactor: Any, config: Config, options: Options) -> int:
    """Run the command given by ``options``; return the exit status.

    Without ``--oneshot`` this follows changes until SIGTERM/SIGINT (exit
    0).  Those signals make it stop at the next safe point: never between
    an APPEND and its database commit.
    """
    for warning in config.warnings:
        log.warn("WARNING: {text}", text=warning)
    for note in config.notes:
        log.info("{text}", text=note)
    try:
        store = StateStore.open(config.database)
    except DatabaseError as e:
        log.error("ERROR: {text}", text=str(e))
        return EXIT_NO_INPUT
    reporter = Reporter()
    stop = _StopRequest(reactor)
    try:
        if options.command in ("sync", "repair") and not options.oneshot:
            return await _watch(reactor, config, options, store, reporter, stop)
        sessions = _Sessions(reactor, config, options.debug)
        status = EXIT_OK
        try:
            if options.command in ("sync", "repair"):
                failed = await _sync(config, options, store, reporter, sessions, stop)
                status = EXIT_ERROR if failed else EXIT_OK
            else:
                await _command(config, options, store, reporter, sessions)
        except (IMAPError, SyncError, CommandError, ValueError) as e:
            # "remote: ERROR: ..." when the error says which server it was.
            reporter.error(getattr(e, "server", None), None, str(e))
            status = EXIT_ERROR
        finally:
            await sessions.close(reporter)
        return status
    finally:
        store.close()
        stop.done()


class _StopRequest:
    """SIGTERM/SIGINT (reactor shutdown) asks the run to stop at a safe point;
    the shutdown waits until it has."""

    def __init__(self, reactor: Any) -> None:
        self.requested = False
        self.callbacks: List[Any] = []
        self._finished: Deferred[None] = Deferred()
        self._trigger = reactor.addSystemEventTrigger("before", "shutdown", self._shutdown)
        self._reactor = reactor

    def _shutdown(self) -> Deferred[None]:
        if not self.requested:
            self.requested = True
            log.info("stopping at the next safe point")
            for callback in self.callbacks:
                callback()
        d: Deferred[None] = Deferred()
        self._finished.addBoth(lambda _: d.callback(None))
        return d

    def __call__(self) -> bool:
        return self.requested

    def done(self) -> None:
        if not self._finished.called:
            self._finished.callback(None)
        if not self.requested:
            # Finished on its own: nothing to wait for at shutdown.
            self._reactor.removeSystemEventTrigger(self._trigger)


def _sync_options(config: Config, options: Options) -> SyncOptions:
    if options.mailboxes:
        # Named mailboxes are synced as named: list-mailbox, list-select-opts
        # and ignore-mailbox do not apply (as in interimap).
        return SyncOptions(
            patterns=list(options.mailboxes),
            local_form=True,
            local_reference=config.local.list_reference,
            remote_reference=config.remote.list_reference,
            repair=options.command == "repair",
        )
    return SyncOptions(
        patterns=list(config.list_mailbox) or [b"*"],
        local_reference=config.local.list_reference,
        remote_reference=config.remote.list_reference,
        select_opts=tuple(config.list_select_opts),
        ignore=config.ignore_mailbox,
        repair=options.command == "repair",
    )


async def _sync(
    config: Config,
    options: Options,
    store: StateStore,
    reporter: Reporter,
    sessions: _Sessions,
    stop: _StopRequest,
) -> int:
    synchronizer = Synchronizer(
        store,
        reporter,
        sessions.open,
        _sync_options(config, options),
        should_stop=stop,
        pause=lambda: deferLater(sessions.reactor, 0),
    )
    return await synchronizer.run()


async def _watch(
    reactor: Any,
    config: Config,
    options: Options,
    store: StateStore,
    reporter: Reporter,
    stop: _StopRequest,
) -> int:
    from imapsync.watch import FatalWatchError, TemporaryWatchError, Watcher

    async def open_side(side: str) -> IIMAPSession:
        return await open_session(reactor, getattr(config, side).server, debug=options.debug)

    watcher = Watcher(
        reactor,
        store,
        reporter,
        open_side,
        _sync_options(config, options),
        # --notify: --watch is the NOOP interval; else the polling period.
        poll=None if options.notify or options.watch is None else float(options.watch),
        idle_noop=float(options.watch) if options.notify and options.watch else IDLE_NOOP,
    )
    stop.callbacks.append(watcher.stop)
    _on_sighup(reactor, watcher.sync_now)
    try:
        await watcher.run()
    except FatalWatchError as e:
        reporter.error(None, None, str(e))
        return EXIT_ERROR
    except TemporaryWatchError as e:
        reporter.error(None, None, f"{e} (exit status {EXIT_TEMPFAIL}: try again later)")
        return EXIT_TEMPFAIL
    return EXIT_OK


def _on_sighup(reactor: Any, callback: Any) -> None:
    """SIGHUP: sync now."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(callback)

    try:
        signal.signal(signal.SIGHUP, handler)
    except ValueError:
        # Not the main thread (tests): no signal handling.
        pass


async def _command(
    config: Config, options: Options, store: StateStore, reporter: Reporter, sessions: _Sessions
) -> None:
    local, remote = await gather(sessions.open("local"), sessions.open("remote"))
    sides = {
        "local": SideSpec("local", local, config.local.list_reference),
        "remote": SideSpec("remote", remote, config.remote.list_reference),
    }
    targets = frozenset(options.targets)
    if options.command == "delete":
        await delete(options.mailboxes, targets, sides, store, reporter)
    else:
        source, destination = options.mailboxes
        await rename(source, destination, targets, sides, store, reporter)


class SyncService(Service):
    """imapsync as a Twisted service (``twistd imapsync``).

    It runs the command given on the command line; with ``--oneshot`` (or
    a command) the reactor stops once it is done.
    """

    name = "imapsync"

    def __init__(self, reactor: Any, config: Config, options: Options) -> None:
        self.reactor = reactor
        self.config = config
        self.options = options
        self.exit_status: Optional[int] = None
        self._running: Optional[Deferred[None]] = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._running = Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        try:
            self.exit_status = await run_once(self.reactor, self.config, self.options)
        except Exception:
            log.failure("imapsync failed")
            self.exit_status = EXIT_ERROR
        if self.reactor.running:
            self.reactor.stop()

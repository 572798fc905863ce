# -*- test-case-name: tests.test_engine -*-
"""A whole synchronization run: connect, list, sync each mailbox, report.

Mailboxes are synchronized by a small pool of workers, each with its own
pair of connections (a SELECT is per connection).  Why connections and not
more pipelining: the expensive part is the servers' own work (Dovecot
spends most of a copy storing APPENDs, one process per connection), so
independent mailboxes on separate connections keep both servers and all
their cores busy.  The pool is small because providers cap connections
per user (Dovecot's default is 10 per user and address).
"""

from __future__ import annotations

from typing import Awaitable, Callable, List, Optional, Pattern, Sequence, Tuple

import attrs
from twisted.logger import Logger

from imapsync.engine.listing import Listing, MailboxPlan, SideSpec, plan
from imapsync.engine.mailbox import (
    MailboxSynchronizer,
    Side,
    StopRequested,
    SyncError,
    no_pause,
)
from imapsync.engine.report import Reporter
from imapsync.imap.defer import gather
from imapsync.imap.errors import IMAPError
from imapsync.imap.session import SYNC_CAPABILITIES
from imapsync.interfaces import IIMAPSession
from imapsync.state import StateStore

log = Logger()

# Connections per server, the first pair included.
MAX_WORKERS = 3
# Only open extra connections when there is this much work per worker.
MAILBOXES_PER_EXTRA_WORKER = 2

SessionFactory = Callable[[str], Awaitable[IIMAPSession]]


@attrs.frozen
class SyncOptions:
    """What to synchronize."""

    patterns: Sequence[bytes] = (b"*",)
    # The patterns are mailbox names from the command line (local delimiter).
    local_form: bool = False
    local_reference: bytes = b""
    remote_reference: bytes = b""
    select_opts: Sequence[bytes] = ()
    ignore: Optional[Pattern[bytes]] = None
    repair: bool = False
    workers: int = MAX_WORKERS


async def prepare_session(session: IIMAPSession) -> IIMAPSession:
    """Check what synchronization needs and ENABLE QRESYNC."""
    session.require(SYNC_CAPABILITIES, "required for stateful synchronization")
    await session.enable(b"QRESYNC")
    return session


@attrs.define
class Synchronizer:
    """One run over all (or the selected) mailboxes."""

    store: StateStore
    reporter: Reporter
    open_session: SessionFactory
    options: SyncOptions = SyncOptions()
    should_stop: Callable[[], bool] = lambda: False
    # Lets the reactor run between slices of long steps (see MailboxSynchronizer).
    pause: Callable[[], Awaitable[None]] = no_pause
    sessions: List[IIMAPSession] = attrs.field(factory=list)
    # Connections opened for extra workers (closed after each pass).
    extra: List[IIMAPSession] = attrs.field(factory=list)

    async def _open(self, side: str) -> IIMAPSession:
        session = await self.open_session(side)
        self.sessions.append(session)
        return await prepare_session(session)

    async def run(self, primary: Optional[Tuple[IIMAPSession, IIMAPSession]] = None) -> int:
        """Synchronize; return the number of mailboxes that failed.

        ``primary``: an open, prepared pair to use (live mode keeps one);
        otherwise one is opened.
        """
        if primary is None:
            local, remote = await gather(self._open("local"), self._open("remote"))
        else:
            local, remote = primary
        try:
            return await self._pass(local, remote)
        finally:
            if primary is not None and self.extra:
                extra, self.extra = self.extra, []
                await gather(*(s.logout() for s in extra))

    async def _pass(self, local: IIMAPSession, remote: IIMAPSession) -> int:
        listing = await plan(
            SideSpec("local", local, self.options.local_reference),
            SideSpec("remote", remote, self.options.remote_reference),
            self.store,
            self.reporter,
            self.options.patterns,
            self.options.select_opts,
            self.options.ignore,
            self.options.local_form,
        )
        work = [p for p in listing.plans if p.dirty or self.options.repair]
        # Largest first: the workers then finish at about the same time,
        # instead of one copying a big mailbox alone at the end.
        work.sort(key=lambda p: -p.work)
        failed = listing.failed
        failed += await self._run_workers(work, listing, (local, remote))
        return failed

    async def _run_workers(
        self, work: List[MailboxPlan], listing: Listing, first: tuple[IIMAPSession, IIMAPSession]
    ) -> int:
        queue = list(work)
        failures = [0]
        # Errors that took a connection pair down, with it the mailbox it
        # was on: not that mailbox's fault, and said once, below.
        lost: List[IMAPError] = []
        extra = min(self.options.workers - 1, max(0, len(work) // MAILBOXES_PER_EXTRA_WORKER - 1))

        async def worker(pair: Optional[tuple[IIMAPSession, IIMAPSession]]) -> None:
            if pair is None:
                try:
                    opened = await gather(self._open("local"), self._open("remote"))
                    self.extra.extend(opened)
                    pair = (opened[0], opened[1])
                except IMAPError as e:
                    # The first pair carries on alone.
                    log.warn("extra connection failed: {error}", error=e)
                    return
            assert pair is not None
            local, remote = pair
            while queue and not self.should_stop():
                job = queue.pop(0)
                try:
                    await self._sync_one(job, local, remote)
                except StopRequested:
                    return
                except SyncError as e:
                    self.reporter.error(e.server, job.name if e.server else None, str(e))
                    failures[0] += 1
                except IMAPError as e:
                    if not _alive(local) or not _alive(remote):
                        # This pair is gone; another worker may take the
                        # mailbox again, from where the database says.
                        lost.append(e)
                        queue.insert(0, job)
                        return
                    self.reporter.mailbox_error(e.server, job.name, str(e))
                    failures[0] += 1
                else:
                    await gather(local.unselect(), remote.unselect())

        await gather(worker(first), *(worker(None) for _ in range(extra)))
        if lost and (queue or not (_alive(first[0]) and _alive(first[1]))):
            # The run cannot finish (or live mode must reconnect): the caller
            # reports the lost connection, once.
            raise lost[0]
        for error in lost:
            self.reporter.warn(error.server, None, f"{error}; the other connections carried on")
        return failures[0]

    async def _sync_one(self, job: MailboxPlan, local: IIMAPSession, remote: IIMAPSession) -> None:
        state = job.state
        synchronizer = MailboxSynchronizer(
            self.store,
            self.reporter,
            job.idx,
            job.name,
            Side("local", local, job.local_wire, state.local if state else None),
            Side("remote", remote, job.remote_wire, state.remote if state else None),
            repair=self.options.repair,
            should_stop=self.should_stop,
            pause=self.pause,
        )
        await synchronizer.run()


def _alive(session: IIMAPSession) -> bool:
    protocol = getattr(session, "protocol", None)
    return bool(getattr(protocol, "connected_and_open", True))

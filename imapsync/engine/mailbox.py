# -*- test-case-name: tests.test_engine -*-
"""Synchronize one mailbox on both servers (the seed's steps 1 to 4).

The invariant kept in the database, per side: every message with a UID
below the stored UIDNEXT has been replicated (or deliberately dropped),
and every change with a MODSEQ up to the stored HIGHESTMODSEQ has been
propagated.  The stored values only move forward once that is true.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Dict, List, Mapping, Optional, Set, Tuple, TypeVar

import attrs
from twisted.internet.defer import Deferred

from imapsync.engine.names import display
from imapsync.engine.report import Reporter
from imapsync.imap.defer import gather
from imapsync.imap.errors import NoResponse
from imapsync.imap.session import AppendMessage, AppendResult, FetchedMessage, SelectResult
from imapsync.imap.spool import body_digest, release
from imapsync.imap.uidset import UIDSet
from imapsync.interfaces import IIMAPSession
from imapsync.state import Side as SideName
from imapsync.state import SideState, StateStore

T = TypeVar("T")

Flags = Tuple[bytes, ...]
Changes = Dict[int, Tuple[int, Flags]]
# (vanished, changes) of the local side, then of the remote side.
SideChanges = Tuple[Tuple[UIDSet, Changes], Tuple[UIDSet, Changes]]

# A MULTIAPPEND batch is sent once it holds this many messages or bytes
# (interimap's figures; measured on Dovecot, bigger batches gain nothing).
BATCH_MESSAGES = 128
BATCH_BYTES = 1024 * 1024
# Flag changes are propagated this many UIDs at a time: the database
# lookups and STORE commands of one slice are one step of the reactor, so
# a mailbox whose every message changed does not stall it.
FLAG_SLICE = 5000
# Batches in flight per direction: one being stored by the target while
# the next is read from the source keeps both servers busy; more would
# only hold memory.
BATCHES_IN_FLIGHT = 2


async def no_pause() -> None:
    """The default pause: none (the engine tests run without a reactor)."""


class SyncError(Exception):
    """This mailbox cannot be synchronized; nothing unsafe was done.

    ``server``: the side at fault ("local", "remote"), when one is.
    """

    def __init__(self, message: str, server: Optional[str] = None) -> None:
        super().__init__(message)
        self.server = server


class StopRequested(Exception):
    """A stop was asked for: the mailbox was left at a safe point."""


@attrs.define
class Side:
    """One server's view of the mailbox during the sync."""

    name: SideName
    session: IIMAPSession
    wire: bytes
    stored: Optional[SideState]
    # UIDs below this are processed; MODSEQs up to ``known_modseq`` seen.
    base_uidnext: int = 0
    known_modseq: int = 0
    uidvalidity: int = 0


@attrs.define
class MailboxSynchronizer:
    """Bring one mailbox to the same state on both servers."""

    store: StateStore
    reporter: Reporter
    idx: int
    name: bytes
    local: Side
    remote: Side
    # Repair mode: compare every UID and flag, not just what changed.
    repair: bool = False
    should_stop: Callable[[], bool] = lambda: False
    # Lets the reactor run (I/O, timers) between slices of a long step.
    pause: Callable[[], Awaitable[None]] = no_pause
    # Messages this run appended, by target side: UID -> flags given.  The
    # server reports them back as changes; those are not news.
    _echo: Dict[str, Dict[int, Flags]] = attrs.field(factory=lambda: {"local": {}, "remote": {}})
    # The UIDs of those messages, by target side.
    _stored: Dict[str, UIDSet] = attrs.field(
        factory=lambda: {"local": UIDSet.from_iterable(()), "remote": UIDSet.from_iterable(())}
    )

    async def run(self) -> None:
        local_sel, remote_sel = await gather(self._select(self.local), self._select(self.remote))
        self._check_selected(self.local, local_sel)
        self._check_selected(self.remote, remote_sel)
        if self.local.stored is None or self.remote.stored is None:
            with self.store.transaction():
                self.store.init_state(
                    self.idx,
                    SideState(local_sel.uidvalidity, 0, 0),
                    SideState(remote_sel.uidvalidity, 0, 0),
                )
        # First recognize what a crashed run stored, so that those pairs are
        # checked below like any other interrupted ones.
        await self._adopt_journal()
        if self.repair:
            await self._repair()
        else:
            await self._resume_interrupted()
        changes = (
            (local_sel.vanished, dict(local_sel.changes)),
            (remote_sel.vanished, dict(remote_sel.changes)),
        )
        if len(local_sel.changes) + len(remote_sel.changes) > FLAG_SLICE:
            await self.pause()
        # What the last pass asked each side to copy.
        asked: Dict[str, UIDSet] = {}
        while True:
            if self.should_stop():
                # Nothing is half done here; the next run carries on.
                raise StopRequested()
            # Filtered now, not when taken: a message copied since reports
            # nothing new with the flags the copy carried.
            await self._propagate(*self._fresh(changes))
            (local_status, remote_status) = await gather(
                self._status(self.local), self._status(self.remote)
            )
            local_changes = self.local.session.take_changes()
            remote_changes = self.remote.session.take_changes()
            changes = (
                (local_changes.vanished, dict(local_changes.changes)),
                (remote_changes.vanished, dict(remote_changes.changes)),
            )
            new_local, new_remote = await gather(
                self._new_uids(self.local, local_status[0]),
                self._new_uids(self.remote, remote_status[0]),
            )
            if not (new_local or new_remote or _any(self._fresh(changes))):
                break
            self._check_delivered(self.local, new_local, asked)
            self._check_delivered(self.remote, new_remote, asked)
            copied_local = await self._copy(self.local, self.remote, new_local)
            copied_remote = await self._copy(self.remote, self.local, new_remote)
            # Below the UIDNEXT just read, every message is now mapped: the
            # next pass searches above it, not the whole mailbox again.
            for side, new, copied, (uidnext, _) in (
                (self.local, new_local, copied_local, local_status),
                (self.remote, new_remote, copied_remote, remote_status),
            ):
                if copied == len(new):
                    side.base_uidnext = max(side.base_uidnext, uidnext)
            asked = {"local": new_local, "remote": new_remote}
        with self.store.transaction():
            for side, (uidnext, modseq) in (
                (self.local, local_status),
                (self.remote, remote_status),
            ):
                self.store.set_state(
                    self.idx,
                    side.name,
                    uidvalidity=side.uidvalidity,
                    uidnext=uidnext,
                    highestmodseq=modseq,
                )

    def _check_delivered(self, side: Side, new: UIDSet, asked: Dict[str, UIDSet]) -> None:
        """Fail if messages the last pass asked ``side`` for are still uncopied.

        The copy raises when storing fails, and a message expunged meanwhile
        no longer shows up: so the server lists these messages but did not
        return them (a FETCH answered for other UIDs).  Asking again would
        loop forever.
        """
        missing = new & asked[side.name] if side.name in asked else None
        if missing:
            raise SyncError(
                f"{side.name} server did not return message(s) UID "
                f"{missing.to_bytes().decode()} of {display(side.wire)} when asked for "
                "them (UID FETCH answered for other UIDs?): they were not copied",
                server=side.name,
            )

    def _fresh(self, changes: SideChanges) -> SideChanges:
        """Both sides' (vanished, changes) less the echo of this run's copies."""
        (lv, lc), (rv, rc) = changes
        return (lv, self._news(self.local, lc)), (rv, self._news(self.remote, rc))

    def _news(self, side: Side, changes: Mapping[int, Tuple[int, Flags]]) -> Changes:
        """``changes`` less the echo of our own APPENDs."""
        appended = self._echo[side.name]
        if not appended:
            # Nothing copied yet (a mailbox where only flags changed).
            return dict(changes)
        return {
            uid: change
            for uid, change in changes.items()
            if uid not in appended or not _same(appended[uid], change[1])
        }

    # -- selecting --------------------------------------------------------

    async def _select(self, side: Side) -> SelectResult:
        stored = side.stored
        result: SelectResult
        if stored is not None and stored.highestmodseq > 0 and not self.repair:
            result = await side.session.select_qresync(
                side.wire, stored.uidvalidity, stored.highestmodseq
            )
        else:
            result = await side.session.select_qresync(side.wire)
        return result

    def _check_selected(self, side: Side, result: SelectResult) -> None:
        where = f"{side.name} mailbox {display(side.wire)}"
        if result.uidnotsticky:
            raise SyncError(
                f"{where} has no persistent UIDs (UIDNOTSTICKY): it cannot be synchronized"
            )
        if result.nomodseq or result.highestmodseq is None:
            raise SyncError(
                f"{where} does not support mod-sequences (NOMODSEQ): it cannot be synchronized"
            )
        stored = side.stored
        if stored is not None and stored.uidvalidity != result.uidvalidity:
            raise SyncError(
                f"UIDVALIDITY of {where} changed (was {stored.uidvalidity}, now {result.uidvalidity}): its UIDs were reset, so nothing "
                "was synchronized. If the mailbox was recreated on purpose, run `imapsync "
                f"--target=database --delete {display(self.name)}` and sync again (its messages will be copied "
                "anew)"
            )
        side.uidvalidity = result.uidvalidity
        side.base_uidnext = stored.uidnext if stored is not None else 0
        side.known_modseq = result.highestmodseq
        if self.repair:
            side.base_uidnext = 0

    async def _status(self, side: Side) -> Tuple[int, int]:
        """The side's (UIDNEXT, HIGHESTMODSEQ) now, after what we did."""
        status = await side.session.status(side.wire, [b"UIDNEXT", b"HIGHESTMODSEQ"])
        if b"UIDNEXT" not in status:
            raise SyncError(
                f"{side.name} server answered STATUS {display(side.wire)} without its UIDNEXT",
                server=side.name,
            )
        modseq = status.get(b"HIGHESTMODSEQ", side.known_modseq)
        side.known_modseq = max(side.known_modseq, modseq)
        return status[b"UIDNEXT"], modseq

    async def _new_uids(self, side: Side, uidnext: int) -> UIDSet:
        """UIDs in [base, uidnext) present on ``side`` and not mapped yet."""
        first = max(side.base_uidnext, 1)
        if uidnext <= first:
            return UIDSet.from_iterable(())
        present: UIDSet = await side.session.uid_search(b"UID %d:%d" % (first, uidnext - 1))
        # This run's own copies are mapped: no need to look them up.
        present = present - self._stored[side.name]
        if not present:
            return present
        mapped = self.store.map_uids(self.idx, side.name, present)
        return present - UIDSet.from_iterable(mapped)

    # -- step 2: expunges and flag changes --------------------------------

    async def _propagate(
        self, local: Tuple[UIDSet, Changes], remote: Tuple[UIDSet, Changes]
    ) -> None:
        local_vanished, local_changes = local
        remote_vanished, remote_changes = remote
        if local_vanished or remote_vanished:
            await self._propagate_expunges(local_vanished, remote_vanished)
        for uid in local_vanished:
            local_changes.pop(uid, None)
        for uid in remote_vanished:
            remote_changes.pop(uid, None)
        if local_changes or remote_changes:
            await self._propagate_flags(local_changes, remote_changes)

    async def _propagate_expunges(self, local_vanished: UIDSet, remote_vanished: UIDSet) -> None:
        from_local = self.store.map_uids(self.idx, "local", local_vanished)
        from_remote = self.store.map_uids(self.idx, "remote", remote_vanished)
        remove_remote = UIDSet.from_iterable(
            r for r in from_local.values() if r not in remote_vanished
        )
        remove_local = UIDSet.from_iterable(
            lu for lu in from_remote.values() if lu not in local_vanished
        )
        await gather(
            self._expunge(self.remote, remove_remote), self._expunge(self.local, remove_local)
        )
        gone_local = set(from_local) | set(from_remote.values())
        with self.store.transaction():
            self.store.delete_mappings(self.idx, "local", gone_local)

    async def _expunge(self, side: Side, uids: UIDSet) -> None:
        if not uids:
            return
        # One after the other: Dovecot was seen to reorder a pipelined
        # STORE and EXPUNGE, leaving messages flagged but not expunged.
        await side.session.uid_store(uids, [b"\\Deleted"], b"+")
        gone = await side.session.uid_expunge(uids)
        if gone:
            self.reporter.removed(side.name, self.name, gone)

    async def _propagate_flags(self, local_changes: Changes, remote_changes: Changes) -> None:
        # Local changes first (a conflict is met there), then the remote
        # ones that are not conflicts, FLAG_SLICE UIDs at a time.
        local_uids = sorted(local_changes)
        for start in range(0, len(local_uids), FLAG_SLICE):
            if start:
                await self.pause()
            to_remote = self.store.map_uids(
                self.idx, "local", local_uids[start : start + FLAG_SLICE]
            )
            # Target flags, per side.
            to_l: Dict[int, Flags] = {}
            to_r: Dict[int, Flags] = {}
            for luid, ruid in to_remote.items():
                lflags = local_changes[luid][1]
                if ruid in remote_changes:
                    rflags = remote_changes[ruid][1]
                    if _same(lflags, rflags):
                        continue
                    union = _union(lflags, rflags)
                    self.reporter.conflict(self.name, luid, lflags, ruid, rflags, union)
                    to_l[luid] = union
                    to_r[ruid] = union
                else:
                    to_r[ruid] = lflags
            await gather(self._store_flags(self.local, to_l), self._store_flags(self.remote, to_r))
        remote_uids = sorted(remote_changes)
        for start in range(0, len(remote_uids), FLAG_SLICE):
            if start or local_uids:
                await self.pause()
            to_local = self.store.map_uids(
                self.idx, "remote", remote_uids[start : start + FLAG_SLICE]
            )
            to_l = {
                luid: remote_changes[ruid][1]
                for ruid, luid in to_local.items()
                if luid not in local_changes
            }
            await self._store_flags(self.local, to_l)

    async def _store_flags(self, side: Side, wanted: Dict[int, Flags]) -> None:
        """Set ``wanted`` flags on ``side``, one STORE per distinct flag list.

        With UNCHANGEDSINCE, a message changed meanwhile on ``side`` is not
        overwritten: it is reported MODIFIED, and both sides get the union.
        """
        groups: Dict[Tuple[bytes, ...], List[int]] = {}
        for uid, flags in wanted.items():
            groups.setdefault(tuple(sorted(set(flags))), []).append(uid)
        modified: Set[int] = set()
        results = await gather(
            *(
                side.session.uid_store(
                    UIDSet.from_iterable(uids),
                    flags,
                    b"",
                    unchangedsince=side.known_modseq,
                )
                for flags, uids in groups.items()
            )
        )
        for (flags, uids), result in zip(groups.items(), results, strict=True):
            modified |= set(result.modified)
            done = [u for u in uids if u not in result.modified]
            if done:
                self.reporter.flags_updated(side.name, self.name, flags, done)
        if modified:
            await self._resolve_modified(side, modified, wanted)

    async def _resolve_modified(
        self, side: Side, modified: Set[int], wanted: Dict[int, Flags]
    ) -> None:
        """Messages changed on ``side`` while we were updating them: union both."""
        current = await side.session.fetch_flags(UIDSet.from_iterable(modified))
        other = self.local if side is self.remote else self.remote
        counterpart = self.store.map_uids(self.idx, side.name, current)
        for uid, (_, flags) in current.items():
            if uid not in wanted or _same(flags, wanted[uid]):
                # Changed meanwhile, but to what we wanted: no conflict.
                continue
            union = _union(flags, wanted[uid])
            other_uid = counterpart.get(uid)
            if other_uid is None:
                continue
            if side.name == "local":
                self.reporter.conflict(self.name, uid, flags, other_uid, wanted[uid], union)
            else:
                self.reporter.conflict(self.name, other_uid, wanted[uid], uid, flags, union)
            await gather(
                side.session.uid_store(UIDSet.from_iterable([uid]), union),
                other.session.uid_store(UIDSet.from_iterable([other_uid]), union),
            )

    # -- step 3: new messages --------------------------------------------

    async def _copy(self, source: Side, target: Side, uids: UIDSet) -> int:
        """Stream ``uids`` from ``source`` into MULTIAPPEND batches on ``target``.

        Returns how many were copied (fewer when some were expunged meanwhile).

        Before a batch is sent, its messages are journaled (source UID and
        body digest); the mapping is committed right after the APPENDUID.
        A crash in between leaves the journal, from which the next run
        recognizes what the target stored instead of copying it twice.
        """
        if not uids:
            return 0
        batch: List[FetchedMessage] = []
        batch_bytes = [0]
        in_flight: List[Deferred[None]] = []
        errors: List[BaseException] = []
        total = len(uids)
        copied = [0, 0]  # messages, bytes

        async def send(messages: List[FetchedMessage]) -> None:
            try:
                result = await target.session.append(
                    target.wire,
                    [AppendMessage(m.body, m.flags, m.internaldate) for m in messages],
                )
            except Exception as e:
                self._append_failed(target, messages, e, errors)
                return
            finally:
                for message in messages:
                    release(message.body)
            try:
                self._check_appenduid(target, result)
                self._appended(source, target, messages, result.uids)
            except Exception as e:
                errors.append(e)
                return
            copied[0] += len(messages)
            copied[1] += sum(len(m.body) for m in messages)
            self.reporter.progress(target.name, self.name, copied[0], total, copied[1])

        def flush() -> None:
            messages = list(batch)
            del batch[:]
            batch_bytes[0] = 0
            with self.store.transaction():
                self.store.journal_add(
                    self.idx,
                    target.name,
                    [(m.uid, body_digest(m.body)) for m in messages],
                )
            done: Deferred[None] = Deferred.fromCoroutine(send(messages))
            if not done.called:
                in_flight.append(done)
                done.addBoth(lambda _: in_flight.remove(done))

        def sink(message: FetchedMessage) -> Optional[Deferred[None]]:
            if errors:
                return None
            if self.should_stop():
                # Let the FETCH end without storing more; committed batches stay.
                errors.append(StopRequested())
                return None
            batch.append(message)
            batch_bytes[0] += len(message.body)
            if len(batch) >= BATCH_MESSAGES or batch_bytes[0] >= BATCH_BYTES:
                flush()
            if len(in_flight) >= BATCHES_IN_FLIGHT:
                waiter: Deferred[None] = Deferred()
                in_flight[0].addBoth(lambda _: waiter.callback(None))
                return waiter
            return None

        try:
            await source.session.fetch_messages(uids, sink)
        finally:
            if batch and not errors:
                flush()
            while in_flight:
                await _quietly(in_flight[0])
        if errors:
            raise errors[0]
        return copied[0]

    def _check_appenduid(self, target: Side, result: AppendResult) -> None:
        """Refuse an APPENDUID that cannot name what was just stored.

        Nothing is recorded then; the journal stays, so the next run
        recognizes the stored messages by their content.
        """
        where = f"{target.name} server answered APPEND to {display(target.wire)} with APPENDUID"
        if result.uidvalidity != target.uidvalidity:
            raise SyncError(
                f"{where} for UIDVALIDITY {result.uidvalidity}, but the mailbox has "
                f"{target.uidvalidity}: nothing recorded",
                server=target.name,
            )
        uids = result.uids
        taken = self.store.map_uids(self.idx, target.name, uids)
        if len(set(uids)) != len(uids) or taken:
            named = UIDSet.from_iterable(taken or uids).to_bytes().decode()
            raise SyncError(
                f"{where} naming UID(s) {named} that are already in use: nothing recorded",
                server=target.name,
            )

    def _appended(
        self, source: Side, target: Side, messages: List[FetchedMessage], uids: Tuple[int, ...]
    ) -> None:
        pairs = [(m.uid, u) for m, u in zip(messages, uids, strict=True)]
        if source.name == "remote":
            pairs = [(t, s) for s, t in pairs]
        with self.store.transaction():
            self.store.add_mappings(self.idx, pairs)
            self.store.journal_remove(self.idx, target.name, [m.uid for m in messages])
        # The copy carried these flags: reports of them, on either side,
        # are not changes to propagate.
        self._stored[target.name] = self._stored[target.name] | UIDSet.from_iterable(uids)
        target_echo, source_echo = self._echo[target.name], self._echo[source.name]
        for message, uid in zip(messages, uids, strict=True):
            target_echo[uid] = message.flags
            source_echo[message.uid] = message.flags
        self.reporter.added(
            target.name,
            self.name,
            [m.uid for m in messages],
            list(uids),
            sum(len(m.body) for m in messages),
        )

    def _append_failed(
        self,
        target: Side,
        messages: List[FetchedMessage],
        error: BaseException,
        errors: List[BaseException],
    ) -> None:
        if isinstance(error, NoResponse):
            # Refused: the server stored nothing, the journal can go.
            with self.store.transaction():
                self.store.journal_remove(self.idx, target.name, [m.uid for m in messages])
            error = SyncError(
                f"{target.name} refused to store {len(messages)} message(s) in {display(target.wire)}: {error.text}",
                server=target.name,
            )
        errors.append(error)

    # -- after an interrupted run -----------------------------------------

    async def _resume_interrupted(self) -> None:
        """Pairs mapped above the stored UIDNEXT: the last run stopped in between.

        Compare just those messages on both sides (the seed's "full
        synchronization" of the interrupted part).
        """
        if self.local.stored is None or self.remote.stored is None:
            return
        pairs = self.store.mappings_from(
            self.idx, self.local.stored.uidnext, self.remote.stored.uidnext
        )
        if not pairs:
            return
        self.reporter.info(None, None, f"Resuming interrupted sync for {display(self.name)}")
        await self._check_pairs(pairs)

    async def _check_pairs(self, pairs: List[Tuple[int, int]]) -> None:
        """Make each mapped pair agree: expunge half-gone pairs, union flags."""
        local_flags, remote_flags = await gather(
            self.local.session.fetch_flags(UIDSet.from_iterable(p[0] for p in pairs)),
            self.remote.session.fetch_flags(UIDSet.from_iterable(p[1] for p in pairs)),
        )
        local_gone = UIDSet.from_iterable(lu for lu, _ in pairs if lu not in local_flags)
        remote_gone = UIDSet.from_iterable(ru for _, ru in pairs if ru not in remote_flags)
        changes_l: Changes = {}
        changes_r: Changes = {}
        for luid, ruid in pairs:
            if luid in local_flags and ruid in remote_flags:
                lflags, rflags = local_flags[luid][1], remote_flags[ruid][1]
                if not _same(lflags, rflags):
                    changes_l[luid] = local_flags[luid]
                    changes_r[ruid] = remote_flags[ruid]
        await self._propagate((local_gone, changes_l), (remote_gone, changes_r))

    async def _adopt_journal(self) -> None:
        """Recognize messages a crashed run stored on a target but never recorded."""
        for target, source in ((self.local, self.remote), (self.remote, self.local)):
            journal = self.store.journal(self.idx, target.name)
            if not journal:
                continue
            # Entries whose source is mapped already are stale (e.g. the
            # database was used by interimap since): only the rest can match.
            mapped = self.store.map_uids(
                self.idx, source.name, [u for uids in journal.values() for u in uids]
            )
            journal = {
                digest: [u for u in uids if u not in mapped] for digest, uids in journal.items()
            }
            status = await self._status(target)
            candidates = await self._new_uids(target, status[0])
            adopted: List[Tuple[int, int]] = []

            def match(
                message: FetchedMessage,
                journal: Dict[bytes, List[int]] = journal,
                adopted: List[Tuple[int, int]] = adopted,
            ) -> None:
                sources = journal.get(body_digest(message.body))
                release(message.body)
                if sources:
                    adopted.append((sources.pop(0), message.uid))

            if candidates:
                await target.session.fetch_messages(candidates, match)
            pairs = adopted if target.name == "remote" else [(t, s) for s, t in adopted]
            with self.store.transaction():
                if pairs:
                    self.store.add_mappings(self.idx, pairs)
                self.store.journal_clear(self.idx, target.name)
            if adopted:
                self.reporter.info(
                    target.name,
                    self.name,
                    "Recognized {} message(s) stored by an interrupted run: {}".format(
                        len(adopted),
                        ", ".join(
                            f"{source.name} UID {s} = {target.name} UID {t}" for s, t in adopted
                        ),
                    ),
                )

    # -- --repair ---------------------------------------------------------

    async def _repair(self) -> None:
        """Compare every mapped pair; what is unmapped is copied by the main loop.

        A pair that lost one message is not taken for an expunge to
        propagate (nothing says the user deleted it): the survivor is
        copied back, as interimap does, so nothing is lost.
        """
        pairs = self.store.mapping(self.idx)
        if not pairs:
            return
        local_flags, remote_flags = await gather(
            self.local.session.fetch_flags(b"1:*"),
            self.remote.session.fetch_flags(b"1:*"),
        )
        unpaired: List[int] = []
        changes_l: Changes = {}
        changes_r: Changes = {}
        name = display(self.name)
        for luid, ruid in pairs:
            in_l, in_r = luid in local_flags, ruid in remote_flags
            if not in_l and not in_r:
                unpaired.append(luid)
                self.reporter.warn(
                    None,
                    None,
                    f"Pair (lUID,rUID) = ({luid},{ruid}) vanished from {name}. Repairing.",
                )
            elif not in_l or not in_r:
                unpaired.append(luid)
                gone, kept = ("local", "remote") if not in_l else ("remote", "local")
                self.reporter.warn(
                    None,
                    None,
                    f"{gone} UID {luid if gone == 'local' else ruid} of {name} disappeared. "
                    f"Copying {kept} UID {ruid if kept == 'remote' else luid} again.",
                )
            elif not _same(local_flags[luid][1], remote_flags[ruid][1]):
                self.reporter.warn(
                    None,
                    None,
                    f"Missed flag update in {name} for (lUID,rUID) = ({luid},{ruid}). Repairing.",
                )
                changes_l[luid] = local_flags[luid]
                changes_r[ruid] = remote_flags[ruid]
        if unpaired:
            with self.store.transaction():
                self.store.delete_mappings(self.idx, "local", unpaired)
        empty = UIDSet.from_iterable(())
        await self._propagate((empty, changes_l), (empty, changes_r))
        for side, flags in ((self.local, local_flags), (self.remote, remote_flags)):
            mapped = set(self.store.map_uids(self.idx, side.name, flags))
            unmapped = UIDSet.from_iterable(uid for uid in flags if uid not in mapped)
            if unmapped:
                self.reporter.warn(
                    side.name,
                    self.name,
                    f"{len(unmapped)} message(s) not in the database: copying them "
                    f"({unmapped.to_bytes().decode()})",
                )


def _same(a: Flags, b: Flags) -> bool:
    return {f.lower() for f in a} == {f.lower() for f in b}


def _union(a: Flags, b: Flags) -> Flags:
    seen: Dict[bytes, bytes] = {}
    for flag in (*a, *b):
        seen.setdefault(flag.lower(), flag)
    return tuple(sorted(seen.values()))


def _any(changes: SideChanges) -> bool:
    return any(bool(v) or bool(c) for v, c in changes)


async def _quietly(d: Deferred[None]) -> None:
    try:
        await d
    except Exception:
        pass

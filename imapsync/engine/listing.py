# -*- test-case-name: tests.test_engine -*-
"""The mailbox list: what to sync, what to create, what has gone missing.

Both servers are listed at once with LIST-EXTENDED + LIST-STATUS, so that
an unchanged mailbox (same UIDNEXT and HIGHESTMODSEQ as stored) costs no
SELECT at all.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Pattern, Sequence, Set, Tuple

import attrs

from imapsync.engine.names import (
    DB_DELIMITER,
    MailboxNameConflictError,
    Namespace,
    display,
    wildcard_regex,
)
from imapsync.engine.report import Reporter
from imapsync.imap.defer import gather
from imapsync.imap.errors import IMAPError
from imapsync.imap.session import MailboxInfo
from imapsync.interfaces import IIMAPSession
from imapsync.state import MailboxRow, MailboxState, SideState, StateStore

STATUS_ITEMS = (b"UIDVALIDITY", b"UIDNEXT", b"HIGHESTMODSEQ")


@attrs.frozen
class SideSpec:
    """One server for listing: its session and ``list-reference``."""

    name: str
    session: IIMAPSession
    reference: bytes = b""


@attrs.frozen
class MailboxPlan:
    """A mailbox present on both sides and in the database."""

    name: bytes
    idx: int
    local_wire: bytes
    remote_wire: bytes
    state: Optional[MailboxState]
    dirty: bool
    # New UIDs on both sides (from LIST-STATUS): an estimate of the work.
    work: int = 0


@attrs.define
class Listing:
    """The outcome of listing: plans, the namespaces, and how many mailboxes failed."""

    plans: List[MailboxPlan]
    local: Namespace
    remote: Namespace
    failed: int = 0


async def discover_namespace(side: SideSpec) -> Namespace:
    """The side's hierarchy delimiter, from ``LIST "" ""`` (RFC 3501 6.3.8)."""
    entries = await side.session.list_extended(
        patterns=[b""], reference=side.reference, subscribed=False, status=()
    )
    delimiter = entries[0].delimiter if entries else None
    return Namespace(delimiter, side.reference)


def side_patterns(patterns: Sequence[bytes], namespace: Namespace) -> List[bytes]:
    """Database-form patterns (NUL for the delimiter) as this side writes them."""
    if namespace.delimiter:
        return [p.replace(DB_DELIMITER, namespace.delimiter) for p in patterns]
    return list(patterns)


async def plan(
    local: SideSpec,
    remote: SideSpec,
    store: StateStore,
    reporter: Reporter,
    patterns: Sequence[bytes] = (b"*",),
    select_opts: Sequence[bytes] = (),
    ignore: Optional[Pattern[bytes]] = None,
    local_form: bool = False,
) -> Listing:
    """List both sides, reconcile with the database, create what is missing.

    ``patterns`` use NUL for the hierarchy delimiter (``list-mailbox``), or,
    with ``local_form``, the local delimiter (mailboxes named on the
    command line).
    """
    local_ns, remote_ns = await gather(discover_namespace(local), discover_namespace(remote))
    if store.needs_migration():
        _migrate(store, reporter, local_ns, remote_ns)
    if local_form and local_ns.delimiter:
        patterns = [
            p if p.upper() == b"INBOX" else p.replace(local_ns.delimiter, DB_DELIMITER)
            for p in patterns
        ]
    if (local_ns.delimiter is None) != (remote_ns.delimiter is None):
        raise IMAPError(
            "one server's namespace is flat and the other's hierarchical "
            f"(local delimiter {local_ns.delimiter!r}, remote {remote_ns.delimiter!r}): they cannot be mirrored"
        )
    local_list, remote_list = await gather(
        local.session.list_extended(
            patterns=side_patterns(patterns, local_ns),
            reference=local.reference,
            selection=select_opts,
            status=STATUS_ITEMS,
        ),
        remote.session.list_extended(
            patterns=side_patterns(patterns, remote_ns),
            reference=remote.reference,
            selection=select_opts,
            status=STATUS_ITEMS,
        ),
    )
    listing = Listing([], local_ns, remote_ns)
    on_local = _by_name(local_list, local_ns, ignore, reporter, "local", listing)
    on_remote = _by_name(remote_list, remote_ns, ignore, reporter, "remote", listing)
    known = {row.name: row for row in store.mailboxes()}
    # Read once for all mailboxes, not once each.
    states = store.states()
    journaled = store.journaled()
    in_scope = wildcard_regex(list(patterns), DB_DELIMITER)
    names = set(on_local) | set(on_remote)
    names |= {
        n for n in known if in_scope.match(n) and not (ignore is not None and ignore.search(n))
    }
    for name in sorted(names):
        try:
            plan_ = await _reconcile(
                name,
                on_local.get(name),
                on_remote.get(name),
                known.get(name),
                local,
                remote,
                listing,
                store,
                reporter,
                states,
                journaled,
            )
        except (IMAPError, MailboxNameConflictError) as e:
            reporter.mailbox_error(e.server if isinstance(e, IMAPError) else None, name, str(e))
            listing.failed += 1
            continue
        if plan_ is not None:
            listing.plans.append(plan_)
    return listing


def _migrate(store: StateStore, reporter: Reporter, local: Namespace, remote: Namespace) -> None:
    """Upgrade an interimap version-0 database (names with real delimiters)."""
    if local.delimiter and remote.delimiter and local.delimiter != remote.delimiter:
        raise IMAPError(
            "this database (interimap schema version 0) stores mailbox names with the "
            "hierarchy delimiter, and the local and remote delimiters differ "
            f"({local.delimiter!r}, {remote.delimiter!r}): it cannot be upgraded; run "
            "interimap 0.5 once to upgrade it"
        )
    store.migrate_from_v0(local.delimiter)
    reporter.info("database", None, "Upgraded the database schema from interimap's version 0")


def _by_name(
    entries: Sequence[MailboxInfo],
    namespace: Namespace,
    ignore: Optional[Pattern[bytes]],
    reporter: Reporter,
    side: str,
    listing: Listing,
) -> Dict[bytes, MailboxInfo]:
    found: Dict[bytes, MailboxInfo] = {}
    for entry in entries:
        if not entry.selectable:
            continue
        if entry.delimiter != namespace.delimiter and entry.name != b"INBOX":
            reporter.error(
                side,
                entry.name,
                f"hierarchy delimiter {entry.delimiter!r} differs from the server's {namespace.delimiter!r}: skipped",
            )
            listing.failed += 1
            continue
        try:
            name = namespace.to_db(entry.name)
        except MailboxNameConflictError as e:
            reporter.error(side, entry.name, str(e))
            listing.failed += 1
            continue
        if name is None or (ignore is not None and ignore.search(name)):
            continue
        found[name] = entry
    return found


async def _reconcile(
    name: bytes,
    local_entry: Optional[MailboxInfo],
    remote_entry: Optional[MailboxInfo],
    row: Optional[MailboxRow],
    local: SideSpec,
    remote: SideSpec,
    listing: Listing,
    store: StateStore,
    reporter: Reporter,
    states: Mapping[int, MailboxState],
    journaled: Set[int],
) -> Optional[MailboxPlan]:
    state = states.get(row.idx) if row is not None else None
    if local_entry is None and remote_entry is None:
        assert row is not None
        with store.transaction():
            store.delete_mailbox(row.idx)
        reporter.info(
            "database", None, f"Removed mailbox {display(name)} (gone from both servers)"
        )
        return None
    if local_entry is None or remote_entry is None:
        present, absent = (
            (local_entry, (remote, listing.remote))
            if remote_entry is None
            else (remote_entry, (local, listing.local))
        )
        assert present is not None
        absent_side, absent_ns = absent
        here = "remote" if absent_side is local else "local"
        if state is not None:
            raise IMAPError(
                f"mailbox exists on {here} but no longer on {absent_side.name}: it was deleted or renamed there "
                f"while imapsync was not running. Run `imapsync --target={here},database --delete {display(name)}` "
                f"to delete it on {here} too, or `imapsync --target={absent_side.name},database --rename {display(name)} NEWNAME` "
                f"after renaming it on {absent_side.name}"
            )
        wire = absent_ns.to_wire(name)
        await absent_side.session.create(wire)
        reporter.info(absent_side.name, None, f"Created mailbox {display(name)}")
        if present.subscribed:
            await absent_side.session.subscribe(wire)
        if row is None:
            with store.transaction():
                idx = store.add_mailbox(name, present.subscribed)
            reporter.info("database", None, f"Created mailbox {display(name)}")
        else:
            idx = row.idx
        return MailboxPlan(
            name,
            idx,
            listing.local.to_wire(name),
            listing.remote.to_wire(name),
            None,
            True,
            _new_uids(present.status, None),
        )
    subscribed = await _subscriptions(
        name, local_entry, remote_entry, row, local, remote, store, reporter
    )
    if row is None:
        with store.transaction():
            idx = store.add_mailbox(name, subscribed)
        reporter.info("database", None, f"Created mailbox {display(name)}")
    else:
        idx = row.idx
    dirty = (
        state is None
        or _changed(local_entry.status, state.local)
        or _changed(remote_entry.status, state.remote)
        or idx in journaled
    )
    work = _new_uids(local_entry.status, state.local if state else None) + _new_uids(
        remote_entry.status, state.remote if state else None
    )
    return MailboxPlan(name, idx, local_entry.name, remote_entry.name, state, dirty, work)


async def _subscriptions(
    name: bytes,
    local_entry: MailboxInfo,
    remote_entry: MailboxInfo,
    row: Optional[MailboxRow],
    local: SideSpec,
    remote: SideSpec,
    store: StateStore,
    reporter: Reporter,
) -> bool:
    """Make subscriptions agree; the side that changed since last time wins."""
    l_sub, r_sub = local_entry.subscribed, remote_entry.subscribed
    if l_sub == r_sub:
        wanted = l_sub
    elif row is None:
        wanted = True
    else:
        wanted = l_sub if l_sub != row.subscribed else r_sub
    for side, entry in ((local, local_entry), (remote, remote_entry)):
        if entry.subscribed != wanted:
            if wanted:
                await side.session.subscribe(entry.name)
                reporter.info(side.name, None, f"Subscribed to {display(name)}")
            else:
                await side.session.unsubscribe(entry.name)
                reporter.info(side.name, None, f"Unsubscribed from {display(name)}")
    if row is not None and row.subscribed != wanted:
        with store.transaction():
            store.set_subscribed(row.idx, wanted)
    return wanted


def _new_uids(status: Optional[Mapping[bytes, int]], stored: Optional[SideState]) -> int:
    """How many UIDs a side has given since ``stored`` (0 when unknown)."""
    if status is None:
        return 0
    since = stored.uidnext if stored is not None else 1
    return max(0, status.get(b"UIDNEXT", since) - since)


def _changed(status: Optional[Mapping[bytes, int]], stored: SideState) -> bool:
    if status is None:
        return True
    current: Tuple[Optional[int], ...] = tuple(status.get(item) for item in STATUS_ITEMS)
    return current != (stored.uidvalidity, stored.uidnext, stored.highestmodseq)

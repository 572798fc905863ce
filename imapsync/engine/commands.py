# -*- test-case-name: tests.test_engine -*-
"""``--delete`` and ``--rename``: change mailboxes on the chosen targets.

Mailboxes deleted or renamed while imapsync was not running make the next
sync stop with a hint; these commands are the fix (``--target`` selects
local, remote and/or the database).
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Sequence

from imapsync.engine.listing import SideSpec, discover_namespace
from imapsync.engine.names import DB_DELIMITER, Namespace, display
from imapsync.engine.report import Reporter
from imapsync.imap.defer import gather
from imapsync.imap.errors import IMAPError
from imapsync.interfaces import IIMAPSession
from imapsync.state import MailboxExistsError, StateStore

TARGETS = frozenset({"local", "remote", "database"})


class CommandError(Exception):
    """The command cannot be carried out; nothing was changed."""


def to_db_name(argument: bytes, local: Namespace) -> bytes:
    """A command-line name (local delimiter) in database form."""
    if argument.upper() == b"INBOX":
        return b"INBOX"
    if local.delimiter:
        return argument.replace(local.delimiter, DB_DELIMITER)
    return argument


async def _namespaces(sides: Dict[str, SideSpec]) -> Dict[str, Namespace]:
    names = list(sides)
    found = await gather(*(discover_namespace(sides[n]) for n in names))
    return dict(zip(names, found, strict=True))


async def _exists(session: IIMAPSession, wire: bytes) -> bool:
    entries = await session.list_extended(patterns=[wire], subscribed=False, status=())
    return any(e.name == wire and e.selectable for e in entries)


async def delete(
    mailboxes: Sequence[bytes],
    targets: FrozenSet[str],
    sides: Dict[str, SideSpec],
    store: StateStore,
    reporter: Reporter,
) -> None:
    """DELETE each mailbox on the server targets, then drop it from the database.

    ``sides`` holds both servers: names on the command line are written
    with the local delimiter.

    Not recursive: children stay (IMAP leaves a \\Noselect parent).
    """
    namespaces = await _namespaces(sides)
    names = [to_db_name(m, namespaces["local"]) for m in mailboxes]
    for name in names:
        if name == b"INBOX":
            raise CommandError("INBOX cannot be deleted (RFC 3501 6.3.4)")
    for name in names:
        row = store.mailbox(name)
        if "database" in targets and row is None and not (targets & {"local", "remote"}):
            raise CommandError(f"mailbox {display(name)} is not in the database")
        for side_name in ("local", "remote"):
            if side_name not in targets:
                continue
            wire = namespaces[side_name].to_wire(name)
            try:
                await sides[side_name].session.delete(wire)
            except IMAPError as e:
                raise CommandError(f"cannot delete {display(name)} on {side_name}: {e}")
            reporter.info(side_name, None, f"Deleted mailbox {display(name)}")
        if "database" in targets and row is not None:
            with store.transaction():
                store.delete_mailbox(row.idx)
            reporter.info("database", None, f"Removed mailbox {display(name)}")


async def rename(
    source: bytes,
    destination: bytes,
    targets: FrozenSet[str],
    sides: Dict[str, SideSpec],
    store: StateStore,
    reporter: Reporter,
) -> None:
    """RENAME on the server targets (children follow) and in the database.

    Refused, before anything changes, when the destination exists on any
    target.
    """
    namespaces = await _namespaces(sides)
    old = to_db_name(source, namespaces["local"])
    new = to_db_name(destination, namespaces["local"])
    if old == b"INBOX" and "database" in targets:
        raise CommandError("renaming INBOX is not supported (its messages would move)")
    checks = {
        side: _exists(sides[side].session, namespaces[side].to_wire(new))
        for side in ("local", "remote")
        if side in targets
    }
    found = dict(zip(checks, await gather(*checks.values()), strict=True))
    for side, exists in found.items():
        if exists:
            raise CommandError(
                f"mailbox {display(new)} exists on {side}. Run `imapsync --target={side} --delete {display(new)}` to delete "
                "it first"
            )
    if "database" in targets and store.mailbox(new) is not None:
        raise CommandError(
            f"mailbox {display(new)} exists in the database. Run `imapsync --target=database --delete {display(new)}` "
            "to delete it first"
        )
    for side in ("local", "remote"):
        if side not in targets:
            continue
        ns = namespaces[side]
        try:
            await sides[side].session.rename(ns.to_wire(old), ns.to_wire(new))
        except IMAPError as e:
            raise CommandError(f"cannot rename {display(old)} to {display(new)} on {side}: {e}")
        reporter.info(side, None, f"Renamed mailbox {display(old)} to {display(new)}")
    if "database" in targets:
        try:
            with store.transaction():
                moved = store.rename_mailbox(old, new)
        except MailboxExistsError as e:
            raise CommandError(
                f"mailbox {display(e.name)} exists in the database. Run `imapsync "
                f"--target=database --delete {display(e.name)}` to delete it first"
            )
        if not moved:
            reporter.warn(
                "database", None, f"mailbox {display(old)} is not in the database (nor below it)"
            )
            return
        reporter.info("database", None, f"Renamed mailbox {display(old)} to {display(new)}")

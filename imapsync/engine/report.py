# -*- test-case-name: tests.test_engine -*-
"""What the engine tells the user: interimap-style log lines and run totals.

Every line is a `twisted.logger` event with ``server`` and ``mailbox``
fields; `imapsync.output` turns them into ``local(INBOX): ...`` lines.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence

import attrs

from imapsync._prefix import PrefixLogger
from imapsync.engine.names import display
from imapsync.imap.uidset import UIDSet

log = PrefixLogger(namespace="imapsync")


def compact_list(uids: Sequence[int]) -> str:
    """UIDs in the given order, runs of consecutive ones as ``a:b`` (interimap's form)."""
    parts = []
    start = previous = None
    for uid in uids:
        if previous is not None and uid == previous + 1:
            previous = uid
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}:{previous}")
        start = previous = uid
    if start is not None:
        parts.append(str(start) if start == previous else f"{start}:{previous}")
    return ",".join(parts)


def compact_set(uids: Iterable[int]) -> str:
    return UIDSet.from_iterable(uids).to_bytes().decode("ascii")


def flags_text(flags: Iterable[bytes]) -> str:
    return " ".join(f.decode("utf-8", "replace") for f in flags)


@attrs.define
class SideTotals:
    added: int = 0
    removed: int = 0
    flag_updates: int = 0
    bytes_added: int = 0


@attrs.define
class Reporter:
    """Logs what happens and counts it, per server."""

    totals: Dict[str, SideTotals] = attrs.field(
        factory=lambda: {"local": SideTotals(), "remote": SideTotals()}
    )
    conflicts: int = 0
    errors: int = 0

    def info(self, server: Optional[str], mailbox: Optional[bytes], text: str) -> None:
        log.info("{prefix}{text}", server=server, mailbox=_name(mailbox), text=text)

    def warn(self, server: Optional[str], mailbox: Optional[bytes], text: str) -> None:
        log.warn("{prefix}WARNING: {text}", server=server, mailbox=_name(mailbox), text=text)

    def error(self, server: Optional[str], mailbox: Optional[bytes], text: str) -> None:
        self.errors += 1
        log.error("{prefix}ERROR: {text}", server=server, mailbox=_name(mailbox), text=text)

    def mailbox_error(self, server: Optional[str], mailbox: bytes, text: str) -> None:
        """An error in ``mailbox``: "remote(INBOX): ERROR: ..." when it is known
        which server was wrong, else "ERROR: INBOX: ..."."""
        if server is not None:
            self.error(server, mailbox, text)
        else:
            self.error(None, None, f"{display(mailbox)}: {text}")

    def added(
        self,
        target: str,
        mailbox: bytes,
        source_uids: Sequence[int],
        target_uids: Sequence[int],
        size: int,
    ) -> None:
        totals = self.totals[target]
        totals.added += len(target_uids)
        totals.bytes_added += size
        if target == "remote":
            uids = f"{compact_list(source_uids)} -> {compact_list(target_uids)}"
        else:
            uids = f"{compact_list(target_uids)} <- {compact_list(source_uids)}"
        log.info(
            "{prefix}Added {count} UID(s) {uids}",
            server=target,
            mailbox=_name(mailbox),
            count=len(target_uids),
            uids=uids,
        )

    def progress(self, target: str, mailbox: bytes, done: int, total: int, size: int) -> None:
        """Messages copied so far: shown in place on a terminal, else not at all
        (a debug event, so other log observers leave it out)."""
        if done >= total:
            return
        log.debug(
            "{prefix}{done}/{total} message(s) copied ({size})",
            server=target,
            mailbox=_name(mailbox),
            done=done,
            total=total,
            size=kibi(size),
            progress=True,
        )

    def removed(self, server: str, mailbox: bytes, uids: Iterable[int]) -> None:
        uids = list(uids)
        self.totals[server].removed += len(uids)
        log.info(
            "{prefix}Removed {count} UID(s) {uids}",
            server=server,
            mailbox=_name(mailbox),
            count=len(uids),
            uids=compact_set(uids),
        )

    def flags_updated(
        self, server: str, mailbox: bytes, flags: Iterable[bytes], uids: Iterable[int]
    ) -> None:
        uids = list(uids)
        self.totals[server].flag_updates += len(uids)
        log.info(
            "{prefix}Updated flags ({flags}) for UID {uids}",
            server=server,
            mailbox=_name(mailbox),
            flags=flags_text(flags),
            uids=compact_set(uids),
        )

    def conflict(
        self,
        mailbox: bytes,
        local_uid: int,
        local_flags: Iterable[bytes],
        remote_uid: int,
        remote_flags: Iterable[bytes],
        union: Iterable[bytes],
    ) -> None:
        self.conflicts += 1
        self.warn(
            None,
            None,
            f"Conflicting flag update in {display(mailbox)} for local UID {local_uid} ({flags_text(local_flags)}) and remote UID {remote_uid} ({flags_text(remote_flags)}). "
            f"Setting both to the union ({flags_text(union)}).",
        )

    def summary(self, server: str, received: int, sent: int) -> None:
        totals = self.totals[server]
        log.info(
            "{prefix}{added} message(s) added ({size}), {removed} removed, {flags} flag update(s); "
            "IMAP traffic (bytes): recv {received} sent {sent}",
            server=server,
            mailbox=None,
            added=totals.added,
            size=kibi(totals.bytes_added),
            removed=totals.removed,
            flags=totals.flag_updates,
            received=kibi(received),
            sent=kibi(sent),
        )


def kibi(count: int) -> str:
    """Byte counts as interimap prints them: 843, 2.84K, 1.20M."""
    value = float(count)
    for unit in ("", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{count:d}" if not unit else f"{value:.2f}{unit}"
        value /= 1024
    return str(count)


def _name(mailbox: Optional[bytes]) -> Optional[str]:
    return display(mailbox) if mailbox is not None else None

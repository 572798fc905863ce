"""Whole synchronization runs of imapsync and interimap, side by side, on real Dovecot.

Usage: python benchmarks/sync.py [--quick] [--rounds N] [--json FILE] [--network] ...

Seeds two fresh Dovecot stores from ``--seed`` (messages of 1 KiB to 1 MiB,
a few multi-MiB ones and attachments, keywords, INTERNALDATEs), gives each
tool its own identical copies, and times, alternating the tools (A B A B)
over ``--rounds`` rounds:

- main:  initial sync, no-op run, incremental run (1% flag changes, 50 new
  and 20 expunged messages on each side) over ``--mailboxes`` mailboxes;
- large: initial, no-op and incremental (one mailbox changed) over
  ``--large-mailboxes`` mailboxes;
- rss:   the initial sync of a mailbox holding a ``--rss-mib`` MiB message;
- stall: imapsync only, run in-process with a 10 ms LoopingCall that records
  the longest gap between its calls: a ``--stall-messages`` message mailbox
  copied, all its flags changed, then a no-op run.

For each run: wall time, the sync process's own CPU, the Dovecot processes'
CPU and the peak RSS of the sync process alone.  After every run both
stores are compared with the expected content (bodies, flags, dates), so a
fast wrong answer cannot win.  Prints a table, writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import base64
import copy
import ctypes
import datetime
import hashlib
import json
import os
import platform
import random
import re
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import attrs

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from tests.dovecot import (  # noqa: E402
    DovecotDaemon,
    DovecotStore,
    IMAPConnection,
    Literal,
    MailStore,
    find_dovecot,
)

GNU_TIME = "/usr/bin/time"
# What GNU time writes per tunnel: user s, system s, max RSS KiB, wall s.
TIME_FORMAT = "%U %S %M %e"
STALL_INTERVAL = 0.010
PR_SET_CHILD_SUBREAPER = 36
# Where the stall probe finds the snapshot of imapsync to run.
CODE_VARIABLE = "IMAPSYNC_BENCH_CODE"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# The main scenario's mailboxes (wire names, "/" hierarchy), in order of use.
MAILBOXES = (
    "INBOX",
    "Archive",
    "Archive/2019",
    "Archive/2020",
    "Archive/2021",
    "Archive/2022",
    "Sent",
    "Drafts",
    "Trash",
    "Junk",
    "Lists",
    "Lists/twisted",
    "Lists/python-dev",
    "Lists/debian-devel",
    "Work",
    "Work/Projects",
    "Work/Projects/imapsync",
    "Work/Reports",
    "Entw&APw-rfe",
    "Receipts",
)
# Mailboxes that exist on one side only before the first sync.
LOCAL_ONLY = ("Archive/2019", "Receipts")
REMOTE_ONLY = ("Lists/debian-devel", "Junk")
KEYWORDS = ("$Label1", "$Label2", "$Label3", "$Important", "$Forwarded", "Work", "Later")
TIMEZONES = (0, 60, 120, -300, -420, 330, 540)

Path_ = Tuple[str, ...]
#: One message as compared: body sha256, sorted flags, INTERNALDATE in UTC.
Entry = Tuple[str, Tuple[str, ...], str]


class BenchmarkError(Exception):
    pass


# --- the corpus ------------------------------------------------------------------


def _imap_date(date: datetime.datetime) -> bytes:
    offset = date.utcoffset() or datetime.timedelta()
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return (
        f'"{date.day:02d}-{MONTHS[date.month - 1]}-{date.year:04d} '
        f"{date.hour:02d}:{date.minute:02d}:{date.second:02d} "
        f'{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"'
    ).encode("ascii")


def _utc(date: datetime.datetime) -> str:
    return date.astimezone(datetime.UTC).isoformat()


@attrs.frozen
class Message:
    mid: str
    raw: bytes = attrs.field(repr=False)
    flags: Tuple[str, ...]
    date: datetime.datetime

    @property
    def entry(self) -> Entry:
        return (hashlib.sha256(self.raw).hexdigest(), self.flags, _utc(self.date))


class Corpus:
    """Deterministic messages: text lines from a fixed pool, random attachments."""

    def __init__(self, seed: int, label: str) -> None:
        self.rng = random.Random(seed * 1_000_003 + zlib.crc32(label.encode()))
        self.label = label
        self.serial = 0
        syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "qu", "ex", "ing", "er"]
        words = [
            "".join(self.rng.choice(syllables) for _ in range(self.rng.randrange(1, 5)))
            for _ in range(3000)
        ]
        lines = []
        for _ in range(20_000):
            line = ""
            while len(line) < 60:
                line += self.rng.choice(words) + " "
            lines.append(line.rstrip().encode("ascii") + b"\r\n")
        self.lines = lines

    def flags(self) -> Tuple[str, ...]:
        rng = self.rng
        flags = set()
        if rng.random() < 0.7:
            flags.add("\\Seen")
        if rng.random() < 0.1:
            flags.add("\\Answered")
        if rng.random() < 0.05:
            flags.add("\\Flagged")
        if rng.random() < 0.15:
            flags.update(rng.sample(KEYWORDS, rng.randrange(1, 3)))
        return tuple(sorted(flags))

    def date(self) -> datetime.datetime:
        rng = self.rng
        start = datetime.datetime(2016, 1, 1, tzinfo=datetime.UTC)
        moment = start + datetime.timedelta(seconds=rng.randrange(9 * 365 * 86400))
        tz = datetime.timezone(datetime.timedelta(minutes=rng.choice(TIMEZONES)))
        return moment.astimezone(tz)

    def _text(self, size: int) -> bytes:
        start = self.rng.randrange(len(self.lines))
        out: List[bytes] = []
        total = 0
        while total < size:
            line = self.lines[(start + len(out)) % len(self.lines)]
            out.append(line)
            total += len(line)
        return b"".join(out)

    def message(
        self,
        size: int,
        *,
        attachment: Optional[bool] = None,
        flags: Optional[Sequence[str]] = None,
    ) -> Message:
        """A message of about ``size`` bytes, CRLF line ends (as Dovecot returns them)."""
        rng = self.rng
        self.serial += 1
        mid = f"{self.label}.{self.serial}.{rng.getrandbits(32):08x}@bench.example"
        date = self.date()
        offset = date.utcoffset() or datetime.timedelta()
        minutes = int(offset.total_seconds()) // 60
        sign = "-" if minutes < 0 else "+"
        header_date = date.strftime("%a, %d %b %Y %H:%M:%S ") + (
            f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
        )
        headers = (
            f"From: Sender {rng.randrange(500)} <s{rng.randrange(500)}@example.org>\r\n"
            f"To: Bench <bench@example.net>\r\n"
            f"Subject: {self._text(1)[:40].decode().strip()} #{self.serial}\r\n"
            f"Date: {header_date}\r\n"
            f"Message-ID: <{mid}>\r\n"
            "MIME-Version: 1.0\r\n"
        ).encode("ascii")
        if attachment is None:
            attachment = size > 16 * 1024 and rng.random() < 0.8
        if not attachment:
            body = b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
            body += self._text(max(0, size - len(headers) - len(body)))
        else:
            boundary = f"b-{self.serial}-{rng.getrandbits(32):08x}".encode()
            text = self._text(min(4096, size // 8))
            head = (
                b'Content-Type: multipart/mixed; boundary="%s"\r\n\r\n'
                b"--%s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s"
                b'--%s\r\nContent-Type: application/octet-stream; name="f%d.bin"\r\n'
                b"Content-Transfer-Encoding: base64\r\n"
                b'Content-Disposition: attachment; filename="f%d.bin"\r\n\r\n'
            ) % (boundary, boundary, text, boundary, self.serial, self.serial)
            tail = b"--%s--\r\n" % boundary
            encoded = max(0, size - len(headers) - len(head) - len(tail))
            raw = rng.randbytes(encoded * 57 // 78)
            body = head + base64.encodebytes(raw).replace(b"\n", b"\r\n") + tail
        return Message(
            mid, headers + body, tuple(sorted(flags)) if flags is not None else self.flags(), date
        )


def message_sizes(rng: random.Random, count: int, total: int) -> List[int]:
    """``count`` sizes adding up to about ``total`` bytes: mostly small, some
    with attachments up to 1 MiB, and a few of several MiB."""

    def log_uniform(low: float, high: float) -> float:
        return float(low * (high / low) ** rng.random())

    big = max(1, round(count / 1250)) if total >= 10_000_000 else 0
    big_sizes = [int(log_uniform(2 << 20, 8 << 20)) for _ in range(big)]
    shapes = []
    for _ in range(count - big):
        r = rng.random()
        if r < 0.85:
            shapes.append(log_uniform(1024, 16 * 1024))
        elif r < 0.97:
            shapes.append(log_uniform(16 * 1024, 256 * 1024))
        else:
            shapes.append(log_uniform(256 * 1024, 1 << 20))
    budget = max(total - sum(big_sizes), 1024 * len(shapes))
    sizes = [int(s) for s in shapes]
    for _ in range(6):  # scale towards the budget, within 1 KiB .. 1 MiB
        scale = budget / max(1, sum(sizes))
        sizes = [min(1 << 20, max(1024, int(s * scale))) for s in sizes]
    sizes += big_sizes
    rng.shuffle(sizes)
    return sizes


# --- expected content ------------------------------------------------------------


@attrs.define
class Model:
    """What both stores should hold: mailbox path -> Message-ID -> entry."""

    mailboxes: Dict[Path_, Dict[str, Entry]] = attrs.field(factory=dict)

    def add(self, path: Path_, message: Message) -> None:
        self.mailboxes.setdefault(path, {})[message.mid] = message.entry

    def where(self) -> Dict[str, Path_]:
        return {mid: path for path, box in self.mailboxes.items() for mid in box}

    def expected(self) -> Dict[Path_, List[Entry]]:
        return {path: sorted(box.values()) for path, box in self.mailboxes.items()}


@attrs.define
class SideChanges:
    """Changes made on one server between two runs, by Message-ID."""

    flags: Dict[str, Tuple[str, ...]] = attrs.field(factory=dict)
    expunge: List[str] = attrs.field(factory=list)
    new: List[Tuple[Path_, Message]] = attrs.field(factory=list)
    #: (mailbox, keyword): add a keyword to every message of a mailbox.
    storm: Optional[Tuple[Path_, str]] = None

    def apply_to_model(self, model: Model) -> None:
        where = model.where()
        for mid, flags in self.flags.items():
            sha, _, date = model.mailboxes[where[mid]][mid]
            model.mailboxes[where[mid]][mid] = (sha, flags, date)
        for mid in self.expunge:
            del model.mailboxes[where[mid]][mid]
        for path, message in self.new:
            model.add(path, message)
        if self.storm is not None:
            path, keyword = self.storm
            box = model.mailboxes[path]
            for mid, (sha, flags, date) in box.items():
                box[mid] = (sha, tuple(sorted({*flags, keyword})), date)


# --- talking to a store (blocking, through the test harness's client) ------------


def quoted(wire: bytes) -> bytes:
    return b'"' + wire.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def flag_list(flags: Iterable[str]) -> bytes:
    return b"(" + " ".join(flags).encode("ascii") + b")"


def uid_set(uids: Iterable[int]) -> bytes:
    values = sorted(set(uids))
    ranges: List[List[int]] = []
    for uid in values:
        if ranges and uid == ranges[-1][1] + 1:
            ranges[-1][1] = uid
        else:
            ranges.append([uid, uid])
    return b",".join(b"%d" % a if a == b else b"%d:%d" % (a, b) for a, b in ranges)


def pairs(items: List[Any]) -> Dict[bytes, Any]:
    return {items[i].upper(): items[i + 1] for i in range(0, len(items) - 1, 2)}


def wire_name(store: MailStore, path: Path_) -> bytes:
    return store.separator.join(path).encode("ascii")


def append(imap: IMAPConnection, mailbox: bytes, messages: Sequence[Message]) -> None:
    """MULTIAPPEND in batches of at most 200 messages or 4 MiB."""
    batch: List[Any] = []
    size = 0
    for index, message in enumerate(messages):
        batch += [flag_list(message.flags), _imap_date(message.date), Literal(message.raw)]
        size += len(message.raw)
        if size > 4 << 20 or len(batch) >= 600 or index == len(messages) - 1:
            imap.command(b"APPEND", quoted(mailbox), *batch)
            batch, size = [], 0


def seed_store(store: MailStore, content: Dict[Path_, List[Message]]) -> None:
    with store.session() as imap:
        for path, messages in content.items():
            mailbox = wire_name(store, path)
            if mailbox != b"INBOX":
                imap.command(b"CREATE", quoted(mailbox))
            if messages:
                append(imap, mailbox, messages)


def uids_by_message_id(imap: IMAPConnection) -> Dict[str, int]:
    result = imap.command(b"UID FETCH", b"1:*", b"(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    found = {}
    for response in result.data(b"FETCH"):
        items = pairs(response[2])
        header = next(v for k, v in items.items() if k.startswith(b"BODY["))
        match = re.search(rb"<([^>]+)>", header or b"")
        if match is not None:
            found[match.group(1).decode("ascii")] = int(items[b"UID"])
    return found


def apply_changes(store: MailStore, changes: SideChanges, where: Dict[str, Path_]) -> None:
    """Make ``changes`` on ``store``, finding messages by Message-ID."""
    touched: Dict[Path_, List[str]] = {}
    for mid in [*changes.flags, *changes.expunge]:
        touched.setdefault(where[mid], []).append(mid)
    with store.session() as imap:
        for path, mids in touched.items():
            imap.select(wire_name(store, path))
            uids = uids_by_message_id(imap)
            by_flags: Dict[Tuple[str, ...], List[int]] = {}
            for mid in mids:
                if mid in changes.flags:
                    by_flags.setdefault(changes.flags[mid], []).append(uids[mid])
            for flags, targets in by_flags.items():
                imap.command(b"UID STORE", uid_set(targets), b"FLAGS.SILENT", flag_list(flags))
            gone = [uids[mid] for mid in mids if mid in changes.expunge]
            if gone:
                # One after the other: Dovecot was seen to reorder them pipelined.
                imap.command(b"UID STORE", uid_set(gone), b"+FLAGS.SILENT", b"(\\Deleted)")
                imap.command(b"UID EXPUNGE", uid_set(gone))
            imap.command(b"UNSELECT")
        new: Dict[Path_, List[Message]] = {}
        for path, message in changes.new:
            new.setdefault(path, []).append(message)
        for path, messages in new.items():
            append(imap, wire_name(store, path), messages)
        if changes.storm is not None:
            path, keyword = changes.storm
            imap.select(wire_name(store, path))
            imap.command(b"UID STORE", b"1:*", b"+FLAGS.SILENT", flag_list([keyword]))


class StoreView:
    """A store's content, read over IMAP; mailboxes whose STATUS did not
    change since the last look are not read again (any change to a
    message moves HIGHESTMODSEQ, UIDNEXT or MESSAGES)."""

    def __init__(self, store: MailStore) -> None:
        self.store = store
        self._cache: Dict[bytes, Tuple[Tuple[int, ...], List[Entry]]] = {}

    def snapshot(self) -> Dict[Path_, List[Entry]]:
        snapshot: Dict[Path_, List[Entry]] = {}
        with self.store.session() as imap:
            result = imap.command(
                b"LIST",
                b'""',
                b'"*"',
                b"RETURN (STATUS (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ))",
            )
            status = {}
            for response in result.data(b"STATUS"):
                items = pairs(response[2])
                status[response[1]] = tuple(
                    int(items[k])
                    for k in (b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY", b"HIGHESTMODSEQ")
                )
            for response in result.data(b"LIST"):
                attributes = {a.lower() for a in response[1]}
                if attributes & {b"\\noselect", b"\\nonexistent"}:
                    continue
                name = response[3]
                separator = response[2].decode("ascii")
                path = tuple(name.decode("ascii").split(separator))
                cached = self._cache.get(name)
                if cached is None or cached[0] != status[name]:
                    cached = (status[name], self._read(imap, name))
                    self._cache[name] = cached
                snapshot[path] = cached[1]
        return snapshot

    def _read(self, imap: IMAPConnection, name: bytes) -> List[Entry]:
        if imap.select(name, readonly=True)["EXISTS"] == 0:
            imap.command(b"UNSELECT")
            return []
        result = imap.command(b"UID FETCH", b"1:*", b"(UID FLAGS INTERNALDATE RFC822.SIZE)")
        metadata = {
            int(items[b"UID"]): items for items in (pairs(r[2]) for r in result.data(b"FETCH"))
        }
        entries = []
        chunk: List[int] = []
        size = 0
        uids = sorted(metadata)
        for index, uid in enumerate(uids):
            chunk.append(uid)
            size += int(metadata[uid][b"RFC822.SIZE"])
            if size < 16 << 20 and len(chunk) < 500 and index < len(uids) - 1:
                continue
            bodies = imap.command(b"UID FETCH", uid_set(chunk), b"(UID BODY.PEEK[])")
            for response in bodies.data(b"FETCH"):
                items = pairs(response[2])
                fetched = metadata[int(items[b"UID"])]
                flags = tuple(
                    sorted(
                        f.decode("ascii") for f in fetched[b"FLAGS"] if f.lower() != b"\\recent"
                    )
                )
                date = datetime.datetime.strptime(
                    fetched[b"INTERNALDATE"].decode("ascii").strip(), "%d-%b-%Y %H:%M:%S %z"
                )
                entries.append(
                    (hashlib.sha256(items[b"BODY[]"] or b"").hexdigest(), flags, _utc(date))
                )
            chunk, size = [], 0
        imap.command(b"UNSELECT")
        return sorted(entries)


def differences(expected: Dict[Path_, List[Entry]], found: Dict[Path_, List[Entry]]) -> List[str]:
    problems = []
    for path in sorted(set(expected) | set(found)):
        want, got = expected.get(path), found.get(path)
        name = "/".join(path)
        if got is None:
            problems.append(f"{name}: missing")
        elif want is None:
            problems.append(f"{name}: unexpected mailbox ({len(got)} messages)")
        elif want != got:
            missing = len([e for e in want if e not in got])
            extra = len([e for e in got if e not in want])
            problems.append(
                f"{name}: {len(got)} messages, {len(want)} expected, {missing} missing or changed, {extra} unexpected"
            )
    return problems


# --- measuring one run -----------------------------------------------------------


def become_subreaper() -> None:
    """Orphaned descendants (interimap does not wait for its tunnels) come to us."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _stat_fields(pid: int) -> Optional[List[str]]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def our_children() -> set[int]:
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == me:
                found.add(int(entry))
    return found


def descendants(pid: int) -> set[int]:
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants, live and reaped (clock ticks)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in {pid} | descendants(pid):
        fields = _stat_fields(member)
        if fields is not None:
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / ticks


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


@attrs.frozen
class Sample:
    wall: float
    own_cpu: float
    server_cpu: float
    #: Peak RSS of the sync process alone, MiB.
    rss_mib: float
    #: False when only a lower bound (sampled VmHWM) could be had.
    rss_exact: bool
    connections: int
    status: int
    #: The tool's VmHWM sampled every 50 ms (a lower bound), MiB.
    rss_sampled_mib: float = 0.0
    stall_ms: Optional[float] = None
    #: Where the reactor thread was in the longest stall: (samples, 5 ms apart; stack).
    stalled_in: Tuple[Tuple[int, str], ...] = ()
    error: str = ""


class ServerMeter:
    """The Dovecot CPU that one run caused."""

    #: Whether the servers are descendants of the tool (tunnels), so that
    #: their CPU is in the tool's rusage and must be taken out of it.
    descendants = True

    def start(self) -> None:
        pass

    def finish(self, orphans: List[Tuple[str, resource.struct_rusage]]) -> Tuple[float, int, int]:
        """(CPU seconds, max RSS KiB, connections)."""
        raise NotImplementedError


class TunnelMeter(ServerMeter):
    """Each tunnel runs under GNU time, which writes its child's rusage to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self) -> None:
        self.path.unlink(missing_ok=True)

    def finish(self, orphans: List[Tuple[str, resource.struct_rusage]]) -> Tuple[float, int, int]:
        cpu, rss, count = 0.0, 0, 0
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                fields = line.split()
                if len(fields) == 4 and all(re.fullmatch(r"[\d.]+", f) for f in fields):
                    cpu += float(fields[0]) + float(fields[1])
                    rss = max(rss, int(fields[2]))
                    count += 1
        # A tunnel whose GNU time was killed first: its imap came to us.
        for name, usage in orphans:
            if name != "time":
                cpu += _cpu(usage)
                rss = max(rss, usage.ru_maxrss)
        return cpu, rss, count


class DaemonMeter(ServerMeter):
    """The daemons' process trees: CPU added over the run, once the run's
    login and imap processes have exited and been reaped by the master."""

    descendants = False

    def __init__(self, daemons: Sequence[DovecotDaemon]) -> None:
        self.masters = [d.pid for d in daemons if d.pid is not None]
        self._before = 0.0
        self._members: set[int] = set()

    def start(self) -> None:
        self._members = set().union(*(descendants(m) for m in self.masters))
        self._before = sum(tree_cpu(m) for m in self.masters)

    def finish(self, orphans: List[Tuple[str, resource.struct_rusage]]) -> Tuple[float, int, int]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = set().union(*(descendants(m) for m in self.masters))
            if not now - self._members:
                break
            time.sleep(0.01)
        return sum(tree_cpu(m) for m in self.masters) - self._before, 0, 0


def reap_orphans(known: set[int], grace: float) -> List[Tuple[str, resource.struct_rusage]]:
    """Wait for descendants left to us; SIGKILL those still there after ``grace``."""
    reaped = []
    deadline = time.monotonic() + grace
    killed = False
    while True:
        left = our_children() - known
        if not left:
            return reaped
        for pid in left:
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                name = "?"
            try:
                done, _, usage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if done == pid:
                reaped.append((name, usage))
        if time.monotonic() > deadline and not killed:
            killed = True
            for pid in our_children() - known:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.002)


def _only_child(pid: int) -> Optional[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def measure(
    argv: Sequence[str],
    env: Dict[str, str],
    log_path: Path,
    meter: ServerMeter,
    timeout: float,
    cwd: Path,
) -> Sample:
    """Run ``argv`` to its end, measured.

    Own CPU: the rusage of the process and of everything it reaped (wait4),
    plus the orphans we reaped, minus the servers' CPU.

    Peak RSS: a child's ru_maxrss starts at its parent's RSS at fork time
    (Linux keeps the high-water mark across exec), and ours is large after
    seeding; so the tool runs under GNU time, whose own RSS is tiny, and
    whose ``%M`` is the maximum over the tool and the children it reaped.
    That is the tool's own peak when it beats every server's; otherwise the
    tool's VmHWM, sampled every 50 ms, is reported as a lower bound.
    """
    known = our_children()
    rss_file = log_path.with_suffix(".maxrss")
    rss_file.unlink(missing_ok=True)
    meter.start()
    with open(log_path, "ab") as log:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(
            [GNU_TIME, "-q", "-f", "%M", "-o", str(rss_file), *argv],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pidfd = os.pidfd_open(proc.pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    hwm = 0
    tool: Optional[int] = None
    error = ""
    try:
        while not poller.poll(50):
            tool = tool or _only_child(proc.pid)
            if tool is not None:
                hwm = max(hwm, _vm_hwm_kib(tool))
            if time.perf_counter() - start > timeout:
                error = f"still running after {timeout:.0f} s: killed"
                os.killpg(proc.pid, signal.SIGKILL)
                break
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    finally:
        os.close(pidfd)
    proc.returncode = os.waitstatus_to_exitcode(status)
    orphans = reap_orphans(known, grace=10.0)
    server_cpu, server_rss, connections = meter.finish(orphans)
    total = _cpu(usage) + sum(_cpu(u) for _, u in orphans)
    try:
        maxrss = int(rss_file.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        maxrss = 0
    exact = maxrss > server_rss
    rss = maxrss if exact else hwm
    return Sample(
        wall=wall,
        own_cpu=total - server_cpu if meter.descendants else total,
        server_cpu=server_cpu,
        rss_mib=rss / 1024,
        rss_exact=exact,
        connections=connections,
        status=proc.returncode,
        rss_sampled_mib=hwm / 1024,
        error=error,
    )


# --- the stall probe (this file run with --stall-probe, in the child) ------------


def stall_probe(output: str, argv: List[str]) -> int:
    """Run imapsync in this process with a LoopingCall every 10 ms; write
    the longest gaps between its calls to ``output``, each with where the
    reactor thread was meanwhile (a watchdog thread samples its stack
    every 5 ms while a call is over 20 ms late)."""
    import threading
    import traceback

    if os.environ.get(CODE_VARIABLE):
        sys.path.insert(0, os.environ[CODE_VARIABLE])
    from twisted.internet import reactor, task

    from imapsync.scripts.main import main

    gaps: List[Tuple[float, float]] = []
    last = [0.0]
    origin = time.perf_counter()
    ticks = [0]
    samples: List[Tuple[float, str]] = []
    reactor_thread = threading.get_ident()
    done = threading.Event()

    def tick() -> None:
        now = time.perf_counter()
        if last[0]:
            gaps.append((now - last[0], now - origin))
            if len(gaps) > 64:
                gaps.sort(reverse=True)
                del gaps[16:]
        last[0] = now
        ticks[0] += 1

    def watchdog() -> None:
        while not done.wait(0.005):
            now = time.perf_counter()
            if not last[0] or now - last[0] < STALL_INTERVAL + 0.020:
                continue
            frame = sys._current_frames().get(reactor_thread)
            if frame is None:
                continue
            frames = traceback.extract_stack(frame)[-6:]
            key = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[::-1])
            samples.append((now - origin, key))

    loop = task.LoopingCall(tick)
    reactor.callWhenRunning(loop.start, STALL_INTERVAL)  # type: ignore[attr-defined]
    threading.Thread(target=watchdog, daemon=True).start()
    try:
        status = main(argv)
    finally:
        done.set()
    gaps.sort(reverse=True)
    longest = []
    for gap, at in gaps[:10]:
        seen: Dict[str, int] = {}
        for when, key in samples:
            if at - gap <= when <= at:
                seen[key] = seen.get(key, 0) + 1
        where = sorted(seen.items(), key=lambda kv: -kv[1])[:3]
        longest.append({"gap_ms": gap * 1000, "at_s": at, "stalled_in": where})
    Path(output).write_text(
        json.dumps({"status": status, "ticks": ticks[0], "longest_gaps": longest})
    )
    return status


# --- the tools -------------------------------------------------------------------


@attrs.frozen
class Tool:
    name: str
    command: Tuple[str, ...]

    def argv(self, config: Path, profile: Optional[Path] = None) -> List[str]:
        if self.name == "interimap":
            return [*self.command, f"--config={config}"]
        args = ["-c", str(config), "--oneshot"]
        if profile is not None:
            return [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "imapsync", *args]
        return [*self.command, *args]


def find_tools(wanted: Sequence[str]) -> List[Tool]:
    tools = []
    for name in wanted:
        if name == "imapsync":
            tools.append(Tool("imapsync", (sys.executable, "-m", "imapsync")))
        elif name == "interimap":
            path = shutil.which("interimap")
            if path is None:
                print("interimap is not installed: imapsync alone (no ratios)", file=sys.stderr)
            else:
                tools.append(Tool("interimap", (path,)))
        else:
            raise SystemExit(f"unknown tool {name!r}")
    return tools


# --- servers: tunnels or network daemons -----------------------------------------


@attrs.define
class Copy:
    """One tool's pair of stores, config and database."""

    directory: Path
    local: MailStore
    remote: MailStore
    sections: Tuple[str, str]
    views: Tuple[StoreView, StoreView] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.views = (StoreView(self.local), StoreView(self.remote))

    def write_config(self, path: Path) -> Path:
        path.write_text(
            f"database = {self.directory / 'state.db'}\n"
            f"[local]\n{self.sections[0]}[remote]\n{self.sections[1]}"
        )
        return path

    def environment(self) -> Dict[str, str]:
        env = dict(os.environ)
        for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
            path = self.directory / name.lower()
            path.mkdir(exist_ok=True)
            env[name] = str(path)
        env["HOME"] = str(self.directory)
        env["TIME"] = TIME_FORMAT
        env.setdefault("LANG", "C.UTF-8")
        return env


class TunnelServers:
    """Stores reached by ``imap`` tunnels (each tunnel under GNU time)."""

    kind = "tunnels, COMPRESS as each tool defaults (remote side only)"

    def __init__(self, directory: Path, compress: str) -> None:
        self.directory = directory
        # Both tools default to COMPRESS=DEFLATE on the remote side only.
        self.compress = "" if compress == "default" else f"compress = {compress.upper()}\n"
        if compress != "default":
            self.kind = f"tunnels, compress = {compress.upper()} on both sides"

    def template(self, scenario: str) -> Tuple[MailStore, MailStore]:
        base = self.directory / f"{scenario}-seed"
        return (
            DovecotStore(base / "local", "/", "local"),
            DovecotStore(base / "remote", ".", "remote"),
        )

    def copy(self, scenario: str, label: str, directory: Path) -> Copy:
        base = self.directory / f"{scenario}-seed"
        stores = []
        for side, separator in (("local", "/"), ("remote", ".")):
            store = DovecotStore(directory / side, separator, side)
            shutil.rmtree(store.home)
            subprocess.run(["cp", "-a", str(base / side / "home"), str(store.home)], check=True)
            stores.append(store)
        rusage = directory / "tunnels.rusage"
        sections = tuple(
            f"type = tunnel\ncommand = {GNU_TIME} -q -a -o {rusage} {s.tunnel_command}\n"
            + self.compress
            for s in stores
        )
        return Copy(directory, stores[0], stores[1], sections)  # type: ignore[arg-type]

    def meter(self, copy: Copy) -> ServerMeter:
        return TunnelMeter(copy.directory / "tunnels.rusage")

    def stop(self) -> None:
        pass


class DaemonServers:
    """Two Dovecot daemons on 127.0.0.1 (imaps, COMPRESS=DEFLATE), one user per copy."""

    kind = "network (imaps + COMPRESS)"
    password = "bench-secret"

    def __init__(self, directory: Path, users: Sequence[str]) -> None:
        from cryptography.hazmat.primitives import serialization

        from tests.certs import make_self_signed

        certified = make_self_signed(["localhost"], ["127.0.0.1"])
        spki = certified.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.fingerprint = "sha256$" + hashlib.sha256(spki).hexdigest()
        accounts = {user: self.password for user in users}
        self.daemons = (
            DovecotDaemon(
                directory / "local-daemon", accounts, certified.cert_pem, certified.key_pem
            ),
            DovecotDaemon(
                directory / "remote-daemon",
                accounts,
                certified.cert_pem,
                certified.key_pem,
                separator=".",
            ),
        )
        for daemon in self.daemons:
            daemon.start()

    def template(self, scenario: str) -> Tuple[MailStore, MailStore]:
        user = f"{scenario}-seed"
        return self.daemons[0].store(user), self.daemons[1].store(user)

    def copy(self, scenario: str, label: str, directory: Path) -> Copy:
        directory.mkdir(parents=True, exist_ok=True)
        user = f"{scenario}-{label}"
        sections = []
        for daemon in self.daemons:
            home = daemon.directory / "users" / user
            shutil.rmtree(home)
            subprocess.run(
                ["cp", "-a", str(daemon.directory / "users" / f"{scenario}-seed"), str(home)],
                check=True,
            )
            sections.append(
                f"type = imaps\nhost = 127.0.0.1\nport = {daemon.imaps_port}\n"
                f"username = {user}\npassword = {self.password}\n"
                f"SSL_fingerprint = {self.fingerprint}\nSSL_verify = NO\ncompress = YES\n"
            )
        return Copy(
            directory,
            self.daemons[0].store(user),
            self.daemons[1].store(user),
            (sections[0], sections[1]),
        )

    def meter(self, copy: Copy) -> ServerMeter:
        return DaemonMeter(self.daemons)

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()


# --- scenarios -------------------------------------------------------------------


@attrs.frozen
class Phase:
    name: str
    #: Makes the changes before the run (from the expected model), or None.
    changes: Optional[Callable[[Model, random.Random], Tuple[SideChanges, SideChanges]]] = None


@attrs.frozen
class Scenario:
    name: str
    title: str
    #: (local content, remote content) by mailbox path.
    seed: Callable[[], Tuple[Dict[Path_, List[Message]], Dict[Path_, List[Message]]]]
    phases: Tuple[Phase, ...]
    imapsync_only: bool = False
    stall_probe: bool = False


def main_mailboxes(count: int) -> List[str]:
    names = list(MAILBOXES[:count])
    if count > len(MAILBOXES):
        names.append("Folders")
        names += [f"Folders/F{i:03d}" for i in range(count - len(names))]
    return names


def seed_main(options: argparse.Namespace) -> Callable[[], Any]:
    def seed() -> Tuple[Dict[Path_, List[Message]], Dict[Path_, List[Message]]]:
        corpus = Corpus(options.seed, "main")
        rng = corpus.rng
        names = main_mailboxes(options.mailboxes)
        weights = [1.0 / (1 + i) ** 0.8 for i in range(len(names))]
        local: Dict[Path_, List[Message]] = {}
        remote: Dict[Path_, List[Message]] = {}
        for name in names:
            path = tuple(name.split("/"))
            if name not in REMOTE_ONLY:
                local[path] = []
            if name not in LOCAL_ONLY:
                remote[path] = []
        sizes = message_sizes(rng, options.messages, int(options.megabytes * 1e6))
        for size in sizes:
            name = rng.choices(names, weights)[0]
            path = tuple(name.split("/"))
            if name in LOCAL_ONLY:
                side = local
            elif name in REMOTE_ONLY:
                side = remote
            else:
                side = local if rng.random() < 0.55 else remote
            side[path].append(corpus.message(size))
        return local, remote

    return seed


def main_changes(options: argparse.Namespace) -> Callable[..., Tuple[SideChanges, SideChanges]]:
    def changes(model: Model, rng: random.Random) -> Tuple[SideChanges, SideChanges]:
        corpus = Corpus(rng.getrandbits(32), f"inc{rng.getrandbits(16)}")
        mids = sorted(model.where().items())
        total = len(mids)
        flags = max(1, round(total * options.flag_percent / 100))
        picked = rng.sample(mids, 2 * flags + 2 * options.expunge)
        paths = sorted(model.mailboxes)
        sides = []
        for side in range(2):
            ours = picked[side::2]
            change = SideChanges()
            for mid, path in ours[:flags]:
                _, old, _ = model.mailboxes[path][mid]
                new = set(old) ^ {"\\Seen"}
                if rng.random() < 0.5:
                    new ^= {rng.choice(KEYWORDS)}
                change.flags[mid] = tuple(sorted(new))
            change.expunge = [mid for mid, _ in ours[flags:]]
            for _ in range(options.new):
                size = message_sizes(rng, 1, 30_000)[0]
                change.new.append((rng.choice(paths), corpus.message(size)))
            sides.append(change)
        return sides[0], sides[1]

    return changes


def large_names(count: int) -> List[str]:
    names = ["INBOX"]
    parents = [f"Box{i:02d}" for i in range(min(20, max(1, count // 10)))]
    names += parents
    index = 0
    while len(names) < count:
        names.append(f"{parents[index % len(parents)]}/Sub{index:04d}")
        index += 1
    return names[:count]


def seed_large(options: argparse.Namespace) -> Callable[[], Any]:
    def seed() -> Tuple[Dict[Path_, List[Message]], Dict[Path_, List[Message]]]:
        corpus = Corpus(options.seed, "large")
        rng = corpus.rng
        local: Dict[Path_, List[Message]] = {}
        remote: Dict[Path_, List[Message]] = {}
        for name in large_names(options.large_mailboxes):
            path = tuple(name.split("/"))
            local[path] = [corpus.message(rng.randrange(1024, 4096)) for _ in range(2)]
            remote[path] = [corpus.message(rng.randrange(1024, 4096))]
        return local, remote

    return seed


def large_change(model: Model, rng: random.Random) -> Tuple[SideChanges, SideChanges]:
    """One mailbox changed on the local side: a new message and a flag change."""
    corpus = Corpus(rng.getrandbits(32), f"one{rng.getrandbits(16)}")
    path = rng.choice(sorted(p for p, box in model.mailboxes.items() if box))
    mid = sorted(model.mailboxes[path])[0]
    _, flags, _ = model.mailboxes[path][mid]
    local = SideChanges(
        flags={mid: tuple(sorted(set(flags) ^ {"\\Flagged"}))},
        new=[(path, corpus.message(2000))],
    )
    return local, SideChanges()


def seed_rss(options: argparse.Namespace) -> Callable[[], Any]:
    def seed() -> Tuple[Dict[Path_, List[Message]], Dict[Path_, List[Message]]]:
        corpus = Corpus(options.seed, "rss")
        big = [corpus.message(options.rss_mib << 20, attachment=True)]
        big += [corpus.message(4000) for _ in range(5)]
        return {("INBOX",): [], ("Big",): big}, {("INBOX",): []}

    return seed


def seed_stall(options: argparse.Namespace) -> Callable[[], Any]:
    def seed() -> Tuple[Dict[Path_, List[Message]], Dict[Path_, List[Message]]]:
        corpus = Corpus(options.seed, "stall")
        rng = corpus.rng
        messages = [
            corpus.message(rng.randrange(400, 2000), attachment=False)
            for _ in range(options.stall_messages)
        ]
        return {("INBOX",): messages}, {("INBOX",): []}

    return seed


def storm_change(model: Model, rng: random.Random) -> Tuple[SideChanges, SideChanges]:
    return SideChanges(storm=(("INBOX",), "$Storm")), SideChanges()


def scenarios(options: argparse.Namespace) -> List[Scenario]:
    incremental = Phase("incremental", main_changes(options))
    return [
        Scenario(
            "main",
            f"{options.messages} messages, {options.megabytes:g} MB, {options.mailboxes} mailboxes",
            seed_main(options),
            (Phase("initial"), Phase("no-op"), incremental),
        ),
        Scenario(
            "large",
            f"{options.large_mailboxes} mailboxes, 1 changed",
            seed_large(options),
            (Phase("initial"), Phase("no-op"), Phase("incremental", large_change)),
        ),
        Scenario(
            "rss",
            f"a mailbox holding a {options.rss_mib} MiB message",
            seed_rss(options),
            (Phase("initial"),),
        ),
        Scenario(
            "stall",
            f"{options.stall_messages} small messages in one mailbox, in-process stall probe",
            seed_stall(options),
            (Phase("initial"), Phase("all flags changed", storm_change), Phase("no-op")),
            imapsync_only=True,
            stall_probe=True,
        ),
    ]


# --- running it all --------------------------------------------------------------


class Bench:
    def __init__(
        self, options: argparse.Namespace, tools: List[Tool], directory: Path, code: Path
    ) -> None:
        self.options = options
        #: The snapshot of imapsync that is measured.
        self.code = code
        self.tools = tools
        self.directory = directory
        self.servers: Any = None
        self.results: Dict[str, Dict[str, Dict[str, List[Sample]]]] = {}
        self.failures: List[str] = []

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def run(self, selected: List[Scenario]) -> None:
        if self.options.network:
            users = [
                f"{s.name}-{label}"
                for s in selected
                for label in ["seed"]
                + [f"r{r}-{t.name}" for r in range(self.options.rounds) for t in self.tools]
            ]
            self.servers = DaemonServers(self.directory, users)
        else:
            self.servers = TunnelServers(self.directory, self.options.compress)
        try:
            for scenario in selected:
                self.scenario(scenario)
        finally:
            self.servers.stop()

    def scenario(self, scenario: Scenario) -> None:
        tools = [t for t in self.tools if t.name == "imapsync" or not scenario.imapsync_only]
        rounds = 1 if scenario.stall_probe else self.options.rounds
        self.log(f"{scenario.name}: seeding ({scenario.title})")
        started = time.monotonic()
        local_content, remote_content = scenario.seed()
        local, remote = self.servers.template(scenario.name)
        seed_store(local, local_content)
        seed_store(remote, remote_content)
        base = Model()
        for content in (local_content, remote_content):
            for path, messages in content.items():
                base.mailboxes.setdefault(path, {})
                for message in messages:
                    base.add(path, message)
        total = sum(
            len(m.raw) for c in (local_content, remote_content) for v in c.values() for m in v
        )
        del local_content, remote_content
        self.log(
            f"{scenario.name}: seeded {sum(len(b) for b in base.mailboxes.values())} messages, "
            f"{total / 1e6:.1f} MB, {len(base.mailboxes)} mailboxes in "
            f"{time.monotonic() - started:.1f} s"
        )
        results = self.results.setdefault(scenario.name, {})
        for round_ in range(rounds):
            model = copy.deepcopy(base)
            rng = random.Random(f"{self.options.seed}-{scenario.name}-{round_}")
            copies = {
                tool.name: self.servers.copy(
                    scenario.name,
                    f"r{round_}-{tool.name}",
                    self.directory / f"{scenario.name}-r{round_}-{tool.name}",
                )
                for tool in tools
            }
            os.sync()
            for phase in scenario.phases:
                if phase.changes is not None:
                    local_changes, remote_changes = phase.changes(model, rng)
                    where = model.where()
                    for pair in copies.values():
                        apply_changes(pair.local, local_changes, where)
                        apply_changes(pair.remote, remote_changes, where)
                    local_changes.apply_to_model(model)
                    remote_changes.apply_to_model(model)
                    os.sync()
                expected = model.expected()
                for tool in tools:
                    sample = self.run_tool(scenario, phase, round_, tool, copies[tool.name])
                    problems = self.verify(copies[tool.name], expected)
                    if problems or sample.status != 0 or sample.error:
                        text = sample.error or (
                            f"exit status {sample.status}" if sample.status else ""
                        )
                        sample = attrs.evolve(
                            sample, error="; ".join(filter(None, [text, *problems[:5]]))
                        )
                        self.failures.append(
                            f"{scenario.name}/{phase.name}/{tool.name} round {round_ + 1}: {sample.error}"
                        )
                    results.setdefault(phase.name, {}).setdefault(tool.name, []).append(sample)
                    stall = (
                        ""
                        if sample.stall_ms is None
                        else f", longest stall {sample.stall_ms:.0f} ms"
                    )
                    self.log(
                        f"{scenario.name} {phase.name} round {round_ + 1} {tool.name}: "
                        f"{sample.wall:.2f} s wall, {sample.own_cpu:.2f} s own CPU, "
                        f"{sample.server_cpu:.2f} s server CPU, {sample.rss_mib:.0f} MiB{stall}"
                        + (f"  FAILED: {sample.error}" if sample.error else "")
                    )
                    for count, stack in sample.stalled_in[:3]:
                        self.log(f"    longest stall: {count} sample(s) in {stack}")
            if not self.options.keep:
                for pair in copies.values():
                    shutil.rmtree(pair.directory, ignore_errors=True)

    def run_tool(
        self, scenario: Scenario, phase: Phase, round_: int, tool: Tool, pair: Copy
    ) -> Sample:
        label = f"{scenario.name}-{phase.name.replace(' ', '-')}-r{round_ + 1}"
        config = pair.write_config(pair.directory / f"{tool.name}.conf")
        probe = None
        if self.options.profile is not None and tool.name == "imapsync":
            self.options.profile.mkdir(parents=True, exist_ok=True)
            argv = tool.argv(config, self.options.profile / f"{label}.prof")
        elif tool.name == "imapsync" and (scenario.stall_probe or self.options.probe_stalls):
            probe = pair.directory / f"stall-{label}.json"
            argv = [
                sys.executable,
                __file__,
                "--stall-probe",
                str(probe),
                "--",
                "-c",
                str(config),
                "--oneshot",
            ]
        else:
            argv = tool.argv(config)
        sample = measure(
            argv,
            {**pair.environment(), "PYTHONPATH": str(self.code), CODE_VARIABLE: str(self.code)},
            pair.directory / f"{tool.name}.log",
            self.servers.meter(pair),
            self.options.timeout,
            self.code,
        )
        log_text = (pair.directory / f"{tool.name}.log").read_text(errors="replace")
        if re.search(r"Traceback|panic|^ERROR", log_text, re.M) and not sample.error:
            tail = [
                line for line in log_text.splitlines() if re.search(r"Traceback|panic|ERROR", line)
            ]
            sample = attrs.evolve(sample, error=" | ".join(tail[-3:]))
        if probe is not None:
            try:
                report = json.loads(probe.read_text())
                stall = max(0.0, report["longest_gaps"][0]["gap_ms"] - STALL_INTERVAL * 1000)
                where = tuple(
                    (count, stack) for stack, count in report["longest_gaps"][0]["stalled_in"]
                )
            except (OSError, ValueError, IndexError, KeyError):
                stall, where = float("nan"), ()
            sample = attrs.evolve(sample, stall_ms=stall, stalled_in=where)
        return sample

    def verify(self, pair: Copy, expected: Dict[Path_, List[Entry]]) -> List[str]:
        problems = []
        for side, view in zip(("local", "remote"), pair.views, strict=True):
            try:
                found = view.snapshot()
            except Exception as e:
                problems.append(f"{side}: cannot read the store: {e}")
                continue
            problems += [f"{side} {p}" for p in differences(expected, found)]
        return problems


# --- reporting -------------------------------------------------------------------


TARGETS = (
    # (scenario, phase, what, limit, description)
    ("main", "initial", "ratio", 0.6, "initial sync, wall ratio imapsync/interimap"),
    ("main", "incremental", "ratio", 0.8, "incremental, wall ratio"),
    ("main", "no-op", "ratio", 3.0, "no-op, {main} mailboxes, wall ratio"),
    ("large", "no-op", "ratio", 0.5, "no-op, {large} mailboxes, wall ratio"),
    (
        "large",
        "incremental",
        "ratio",
        0.5,
        "incremental, {large} mailboxes (1 changed), wall ratio",
    ),
    ("rss", "initial", "rss", 80.0, "peak RSS syncing a {rss} MiB message, MiB (imapsync)"),
    ("stall", "*", "stall", 100.0, "longest reactor stall, ms ({stall} messages)"),
)


def median(samples: List[Sample], field: str) -> float:
    return statistics.median(getattr(s, field) for s in samples)


def summarize(bench: Bench) -> Dict[str, Any]:
    summary: Dict[str, Any] = {}
    for scenario, phases in bench.results.items():
        for phase, by_tool in phases.items():
            row: Dict[str, Any] = {}
            for tool, every in by_tool.items():
                # A wrong or failed run is reported, not timed.
                samples = [s for s in every if not s.error] or every
                row[tool] = {
                    "wall_s": median(samples, "wall"),
                    "own_cpu_s": median(samples, "own_cpu"),
                    "server_cpu_s": median(samples, "server_cpu"),
                    "peak_rss_mib": median(samples, "rss_mib"),
                    "rss_exact": all(s.rss_exact for s in samples),
                    "connections": median(samples, "connections"),
                    "failed": [s.error for s in every if s.error],
                    "samples": [attrs.asdict(s) for s in every],
                }
                stalls = [s.stall_ms for s in samples if s.stall_ms is not None]
                if stalls:
                    row[tool]["longest_stall_ms"] = max(stalls)
            if "imapsync" in row and "interimap" in row:
                ours, theirs = row["imapsync"], row["interimap"]
                row["ratio_wall"] = ours["wall_s"] / theirs["wall_s"]
                row["ratio_cpu"] = (ours["own_cpu_s"] + ours["server_cpu_s"]) / max(
                    1e-9, theirs["own_cpu_s"] + theirs["server_cpu_s"]
                )
            summary.setdefault(scenario, {})[phase] = row
    return summary


def check_targets(summary: Dict[str, Any], options: argparse.Namespace) -> List[Dict[str, Any]]:
    names = {
        "main": options.mailboxes,
        "large": options.large_mailboxes,
        "rss": options.rss_mib,
        "stall": options.stall_messages,
    }
    checked = []
    for scenario, phase, what, limit, text in TARGETS:
        phases = summary.get(scenario, {})
        value: Optional[float] = None
        if what == "ratio":
            value = phases.get(phase, {}).get("ratio_wall")
        elif what == "rss":
            value = phases.get(phase, {}).get("imapsync", {}).get("peak_rss_mib")
        elif what == "stall":
            stalls = [
                row["imapsync"]["longest_stall_ms"]
                for row in phases.values()
                if "longest_stall_ms" in row.get("imapsync", {})
            ]
            value = max(stalls) if stalls else None
        checked.append(
            {
                "target": text.format(**names),
                "limit": limit,
                "value": value,
                "met": None if value is None or value != value else value <= limit,
            }
        )
    return checked


def print_table(
    summary: Dict[str, Any], targets: List[Dict[str, Any]], titles: Dict[str, str]
) -> None:
    header = f"{'phase':<28} {'tool':<10} {'wall s':>8} {'own CPU s':>10} {'server CPU s':>13} {'peak RSS MiB':>13} {'conns':>6} {'wall ratio':>11} {'CPU ratio':>10}"
    print(header)
    print("-" * len(header))
    for scenario, phases in summary.items():
        print(f"{scenario}: {titles.get(scenario, '')}")
        for phase, row in phases.items():
            first = True
            for tool in ("imapsync", "interimap"):
                if tool not in row:
                    continue
                data = row[tool]
                ratio = cpu_ratio = ""
                if first and "ratio_wall" in row:
                    ratio = f"{row['ratio_wall']:.2f}"
                    cpu_ratio = f"{row['ratio_cpu']:.2f}"
                rss = f"{data['peak_rss_mib']:.0f}" + ("" if data["rss_exact"] else "~")
                # Counted for tunnels only.
                connections = f"{data['connections']:.0f}" if data["connections"] else "-"
                extra = ""
                if "longest_stall_ms" in data:
                    extra += f"  longest stall {data['longest_stall_ms']:.0f} ms"
                if data["failed"]:
                    extra += "  FAILED"
                print(
                    f"  {phase if first else '':<26} {tool:<10} {data['wall_s']:>8.2f} "
                    f"{data['own_cpu_s']:>10.2f} {data['server_cpu_s']:>13.2f} {rss:>13} "
                    f"{connections:>6} {ratio:>11} {cpu_ratio:>10}{extra}"
                )
                first = False
    print()
    print("Targets:")
    for target in targets:
        value = target["value"]
        shown = "n/a" if value is None else f"{value:.2f}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        print(f"  {target['target']:<62} {shown:>8}  (<= {target['limit']:g})  {verdict}")


def machine() -> Dict[str, Any]:
    def output(argv: List[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "?"

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import twisted

    paths = find_dovecot()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "dovecot": paths.version if paths else "?",
        "interimap": output(["interimap", "--version"]) if shutil.which("interimap") else "absent",
    }


def snapshot_code(directory: Path) -> Tuple[Path, str]:
    """Copy the imapsync package, compiled, to ``directory``: the runs use
    that copy, so that edits to the work tree during a run change nothing.
    Returns the directory and a description (commit, local changes, digest)."""
    shutil.copytree(
        REPOSITORY / "imapsync",
        directory / "imapsync",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(directory)], check=True)
    digest = hashlib.sha256()
    for path in sorted((directory / "imapsync").rglob("*.py")):
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=REPOSITORY,
                capture_output=True,
                text=True,
                timeout=30,
                # Read only: no index refresh.
                env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    changed = git("status", "--porcelain", "--", "imapsync")
    state = f" + {len(changed.splitlines())} changed file(s)" if changed else ""
    return directory, f"commit {commit}{state}, imapsync/*.py sha256 {digest.hexdigest()[:12]}"


def parse_options(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, one round (a smoke run)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--messages", type=int)
    parser.add_argument("--megabytes", type=float)
    parser.add_argument("--mailboxes", type=int, default=20)
    parser.add_argument("--flag-percent", type=float, default=1.0)
    parser.add_argument("--new", type=int, default=50)
    parser.add_argument("--expunge", type=int, default=20)
    parser.add_argument("--large-mailboxes", type=int)
    parser.add_argument("--rss-mib", type=int)
    parser.add_argument("--stall-messages", type=int)
    parser.add_argument(
        "--only", default="main,large,rss,stall", help="scenarios, comma-separated"
    )
    parser.add_argument("--tools", default="imapsync,interimap")
    parser.add_argument(
        "--network",
        action="store_true",
        help="two Dovecot daemons on 127.0.0.1, imaps with COMPRESS, instead of tunnels",
    )
    parser.add_argument(
        "--compress",
        choices=("default", "yes", "no"),
        default="default",
        help="tunnels: COMPRESS=DEFLATE as each tool defaults (remote side only), or set on both",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="per run, seconds")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the stores go (default: the temp dir; /dev/shm takes the disk out)",
    )
    parser.add_argument("--json", type=Path, help="write the results there")
    parser.add_argument("--keep", action="store_true", help="keep the stores and logs")
    parser.add_argument(
        "--profile", type=Path, help="run imapsync under cProfile, .prof files there (slower)"
    )
    parser.add_argument(
        "--probe-stalls",
        action="store_true",
        help="run imapsync in-process with the stall probe in every scenario, not just stall",
    )
    parser.add_argument("--stall-probe", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    quick = {
        "rounds": 1,
        "messages": 500,
        "megabytes": 20.0,
        "large_mailboxes": 200,
        "rss_mib": 50,
        "stall_messages": 10_000,
    }
    full = {
        "rounds": 3,
        "messages": 5000,
        "megabytes": 150.0,
        "large_mailboxes": 1000,
        "rss_mib": 50,
        "stall_messages": 100_000,
    }
    for key, value in (quick if options.quick else full).items():
        if getattr(options, key) is None:
            setattr(options, key, value)
    return options


def main() -> int:
    if "--stall-probe" in sys.argv:
        at = sys.argv.index("--stall-probe")
        rest = sys.argv[at + 2 :]
        return stall_probe(sys.argv[at + 1], rest[1:] if rest[:1] == ["--"] else rest)
    options = parse_options(sys.argv[1:])
    if find_dovecot() is None:
        raise SystemExit("Dovecot 2.3 is needed (Debian: apt install dovecot-imapd)")
    if not options.network and not os.access(GNU_TIME, os.X_OK):
        raise SystemExit(f"{GNU_TIME} is needed to measure the servers (Debian: apt install time)")
    become_subreaper()
    tools = find_tools(options.tools.split(","))
    wanted = options.only.split(",")
    selected = [s for s in scenarios(options) if s.name in wanted]
    directory = Path(tempfile.mkdtemp(prefix="imapsync-bench-", dir=options.workdir))
    os.chmod(directory, 0o755)
    code, revision = snapshot_code(directory / "code")
    bench = Bench(options, tools, directory, code)
    described = machine()
    print(
        "machine: {nproc} CPUs ({cpu}), Python {python}, Twisted {twisted}, Dovecot {dovecot}, "
        "interimap {interimap}".format(**described),
        file=sys.stderr,
    )
    print(f"imapsync: {revision}", file=sys.stderr)
    started = time.monotonic()
    try:
        bench.run(selected)
    except KeyboardInterrupt:
        bench.log("interrupted: reporting what was measured")
    finally:
        if options.keep:
            bench.log(f"stores and logs kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    summary = summarize(bench)
    targets = check_targets(summary, options)
    print()
    print(
        f"Servers: {bench.servers.kind if bench.servers else '?'}; medians of {options.rounds} "
        f"round(s); seed {options.seed}; {time.monotonic() - started:.0f} s in all"
    )
    print_table(summary, targets, {s.name: s.title for s in selected})
    if bench.failures:
        print("\nFAILURES (wrong results count as failures, whatever their speed):")
        for failure in bench.failures:
            print(f"  {failure}")
    if options.json is not None:
        options.json.write_text(
            json.dumps(
                {
                    "machine": described,
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "options": {
                        k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()
                    },
                    "servers": bench.servers.kind if bench.servers else None,
                    "imapsync_revision": revision,
                    "results": summary,
                    "targets": targets,
                    "failures": bench.failures,
                },
                indent=2,
            )
        )
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())

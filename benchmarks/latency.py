# -*- test-case-name: tests.test_watch_dovecot -*-
"""Time live mode: how long a new message takes to reach the other server.

Usage: python benchmarks/latency.py [--rounds N] [--gap S] [--json FILE] [--trace]

Starts the real command in live mode (``python -m imapsync -c CONFIG``)
between two fresh Dovecot stores reached by tunnels (separators ``/`` and
``.``), waits for its first sync, then N times (default 20) appends a
message on one side, alternating sides, and times it until the other side
shows it: a session of the harness's own client (tests/dovecot.py) has
INBOX open read-only there and polls with NOOP every 20 ms. Reading the
mailbox from another session would make Dovecot report it as changed, and
start passes of its own. Prints min/median/p90/max in ms.

``--trace`` runs the command with ``--debug`` and splits each round by its
log lines: until the server reports the change (NOTIFY), until the pass
starts (imapsync's settle delay), until the copy is logged, until seen.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from tests.dovecot import (  # noqa: E402
    DovecotStore,
    IMAPConnection,
    Literal,
    find_dovecot,
    make_message,
)

POLL = 0.02
# Bounds: a round that takes this long is a hang, not a figure.
ROUND_TIMEOUT = 30.0
START_TIMEOUT = 60.0
# After the first sync: NOTIFY SET follows it within milliseconds.
SETTLE_AFTER_START = 1.0


class Command:
    """imapsync in the background; its stderr lines kept with their arrival times."""

    def __init__(self, argv: List[str], env: Dict[str, str]) -> None:
        self.lines: List[Tuple[float, str]] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            argv,
            cwd=REPOSITORY,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.lines.append((time.monotonic(), line))

    def since(self, start: float) -> List[Tuple[float, str]]:
        with self._lock:
            return [(t, line) for t, line in self.lines if t >= start]

    def tail(self, count: int = 30) -> str:
        with self._lock:
            return "\n".join(line for _, line in self.lines[-count:])

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 10 s; kill what it started, by PID."""
        children = _descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait(10)
        for pid, start in children:
            if _start_time(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._reader.join(10)
        return status


def _start_time(pid: int) -> Optional[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(pid: int) -> List[Tuple[int, str]]:
    """(pid, start time) of the processes below ``pid`` (tunnels, their imap)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rpartition(")")[2].split()[1]), []).append(int(entry))
    found: List[Tuple[int, str]] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            start = _start_time(child)
            if start is not None:
                found.append((child, start))
                todo.append(child)
    return found


class Watcher:
    """INBOX of one store, open read-only, polled with NOOP."""

    def __init__(self, store: DovecotStore) -> None:
        self.imap = store.session()
        self.exists = self.imap.select("INBOX", readonly=True)["EXISTS"]

    def wait_for(self, count: int, timeout: float) -> float:
        """Poll until INBOX holds ``count`` messages; return when it was seen."""
        deadline = time.monotonic() + timeout
        while self.exists < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} messages not seen within {timeout} s")
            time.sleep(POLL)
            for response in self.imap.command(b"NOOP").data(b"EXISTS"):
                self.exists = int(response[0])
        return time.monotonic()

    def close(self) -> None:
        self.imap.close()


def append(imap: IMAPConnection, data: bytes) -> float:
    """APPEND to INBOX; return when the server said OK."""
    imap.command(b"APPEND", b"INBOX", Literal(data))
    return time.monotonic()


def percentile(values: List[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def breakdown(lines: List[Tuple[float, str]], source: str, start: float) -> Dict[str, float]:
    """Split one round by the --debug lines logged after ``start``."""
    marks: Dict[str, float] = {}
    for when, line in lines:
        if "notified" not in marks and re.match(rf"(?:{source}: )+S: \* STATUS INBOX ", line):
            marks["notified"] = when
        elif "notified" in marks and "pass" not in marks and re.search(r"C: \S+ LIST ", line):
            marks["pass"] = when
        elif "pass" in marks and re.search(r"\(INBOX\): Added 1 UID", line):
            marks["copied"] = when
            break
    return {name: (when - start) * 1000 for name, when in marks.items()}


def run(rounds: int, gap: float, trace: bool) -> Dict[str, object]:
    directory = Path(tempfile.mkdtemp(prefix="imapsync-latency-"))
    command: Optional[Command] = None
    watchers: Dict[str, Watcher] = {}
    writers: Dict[str, IMAPConnection] = {}
    try:
        local = DovecotStore(directory / "local", "/", "local")
        remote = DovecotStore(directory / "remote", ".", "remote")
        local.append("INBOX", make_message("first local"))
        remote.append("INBOX", make_message("first remote"))
        config = directory / "config"
        config.write_text(
            f"database = {directory / 'state.db'}\n"
            f"[local]\ntype = tunnel\ncommand = {local.tunnel_command}\n"
            f"[remote]\ntype = tunnel\ncommand = {remote.tunnel_command}\n"
        )
        env = dict(os.environ, XDG_CONFIG_HOME=str(directory), XDG_DATA_HOME=str(directory))
        argv = [sys.executable, "-m", "imapsync", "-c", str(config)]
        command = Command(argv + (["--debug"] if trace else []), env)

        for side, store in (("local", local), ("remote", remote)):
            watchers[side] = Watcher(store)
            writers[side] = store.session()
        for watcher in watchers.values():
            watcher.wait_for(2, START_TIMEOUT)
        time.sleep(SETTLE_AFTER_START)

        results = []
        for i in range(rounds):
            source, target = ("local", "remote") if i % 2 == 0 else ("remote", "local")
            expected = watchers[target].exists + 1
            sent = append(writers[source], make_message(f"round {i}", f"from {source}"))
            try:
                seen = watchers[target].wait_for(expected, ROUND_TIMEOUT)
            except TimeoutError as e:
                raise SystemExit(f"round {i} ({source} -> {target}): {e}\n{command.tail()}")
            watchers[source].wait_for(expected, ROUND_TIMEOUT)
            result: Dict[str, object] = {
                "round": i,
                "from": source,
                "ms": round((seen - sent) * 1000, 1),
            }
            if trace:
                time.sleep(0.05)  # the last lines of the pass
                marks = breakdown(command.since(sent), source, sent)
                result.update({k: round(v, 1) for k, v in marks.items()})
            results.append(result)
            time.sleep(gap)
        status = command.stop()
        if status != 0:
            raise SystemExit(f"imapsync exited {status}\n{command.tail()}")
        return summary(results)
    finally:
        for watcher in watchers.values():
            watcher.close()
        for writer in writers.values():
            writer.close()
        if command is not None and command.proc.poll() is None:
            command.stop()
        shutil.rmtree(directory, ignore_errors=True)


def summary(results: List[Dict[str, object]]) -> Dict[str, object]:
    latencies = [float(r["ms"]) for r in results]  # type: ignore[arg-type]
    out: Dict[str, object] = {
        "count": len(latencies),
        "min_ms": min(latencies),
        "median_ms": statistics.median(latencies),
        "p90_ms": percentile(latencies, 0.9),
        "max_ms": max(latencies),
        "rounds": results,
    }
    for mark in ("notified", "pass", "copied"):
        values = [float(r[mark]) for r in results if mark in r]  # type: ignore[arg-type]
        if values:
            out[f"median_{mark}_ms"] = statistics.median(values)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="messages to time (default 20)")
    parser.add_argument(
        "--gap", type=float, default=0.2, help="seconds between rounds (default 0.2)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument(
        "--trace", action="store_true", help="split each round by imapsync's --debug log"
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if find_dovecot() is None:
        parser.exit(2, "Dovecot 2.3 not found (Debian: apt install dovecot-imapd)\n")
    figures = run(args.rounds, args.gap, args.trace)
    print(
        f"live-mode latency over {figures['count']} messages (alternating sides):"
        f" min {figures['min_ms']:.0f} ms, median {figures['median_ms']:.0f} ms,"
        f" p90 {figures['p90_ms']:.0f} ms, max {figures['max_ms']:.0f} ms"
    )
    if args.trace:
        print(
            "median time after the APPEND until: the server's event"
            f" {figures.get('median_notified_ms', float('nan')):.0f} ms, the pass"
            f" {figures.get('median_pass_ms', float('nan')):.0f} ms, the copy logged"
            f" {figures.get('median_copied_ms', float('nan')):.0f} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

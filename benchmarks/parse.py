# -*- test-case-name: tests.test_imap_parser -*-
"""Time our ResponseParser against twisted.mail.imap4.IMAP4Client on 100k FETCH lines.

Usage: python benchmarks/parse.py [--lines N] [--stream-mib M]

The lines are the hot shape of a flag sync,
``* n FETCH (UID u MODSEQ (m) FLAGS (\\Seen $Label1))``, fed in 64 KiB chunks
(a TCP read) and in 4 MiB chunks (what COMPRESS=DEFLATE inflates to).

Then, in a fresh process, one message of M MiB (default 50) is streamed
through IMAPSession.fetch_messages in 64 KiB reads and the growth of the
peak RSS is printed (the target: under twice the message size).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imapsync.imap._parser import ResponseParser  # noqa: E402

CHUNKS = [("64 KiB", 64 * 1024), ("4 MiB", 4 * 1024 * 1024)]
# Past this, IMAP4Client is timed on fewer lines and scaled up.
TWISTED_BUDGET = 60.0
TWISTED_SAMPLE_LINES = 10_000


def make_lines(count: int) -> bytes:
    return b"".join(
        b"* %d FETCH (UID %d MODSEQ (%d) FLAGS (\\Seen $Label1))\r\n"
        % (n, n + 1000, 7_000_000 + n)
        for n in range(1, count + 1)
    )


def time_ours(data: bytes, chunk: int, expected: int) -> float:
    parser = ResponseParser()
    count = 0
    start = time.perf_counter()
    for pos in range(0, len(data), chunk):
        parser.feed(data[pos : pos + chunk])
        while parser.next_response() is not None:
            count += 1
    elapsed = time.perf_counter() - start
    assert count == expected, count
    return elapsed


def time_twisted(data: bytes, chunk: int, expected: int) -> float:
    """IMAP4Client collecting the lines of a UID FETCH, until its Deferred fires."""
    from twisted.internet.testing import StringTransport
    from twisted.mail.imap4 import IMAP4Client

    client = IMAP4Client()
    transport = StringTransport()
    client.makeConnection(transport)
    client.dataReceived(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
    # As after LOGIN and SELECT: IMAP4Client has no separate selected state.
    client.state = "auth"
    results: List[Dict[int, object]] = []
    client.fetchFlags("1:*", uid=True).addCallback(results.append)
    tag = transport.value().split()[0]
    start = time.perf_counter()
    for pos in range(0, len(data), chunk):
        client.dataReceived(data[pos : pos + chunk])
    client.dataReceived(tag + b" OK Fetch completed\r\n")
    elapsed = time.perf_counter() - start
    assert len(results) == 1 and len(results[0]) == expected, results[:1]
    return elapsed


def twisted_in_child(lines: int, chunk: int) -> Tuple[float, str]:
    """Run the IMAP4Client timing in a child process, within TWISTED_BUDGET.

    When it takes longer, time TWISTED_SAMPLE_LINES lines and scale linearly:
    LineReceiver's per-line split of its buffer is quadratic in the chunk
    size, so that estimate is a lower bound.
    """
    command = [sys.executable, __file__, "--twisted-only", str(lines), str(chunk)]
    try:
        output = subprocess.run(
            command, capture_output=True, check=True, timeout=TWISTED_BUDGET
        ).stdout
        return float(output), ""
    except subprocess.TimeoutExpired:
        command[-2] = str(TWISTED_SAMPLE_LINES)
        output = subprocess.run(command, capture_output=True, check=True).stdout
        estimate = float(output) * lines / TWISTED_SAMPLE_LINES
        note = (
            f" (over {TWISTED_BUDGET:.0f} s: measured on {TWISTED_SAMPLE_LINES} lines "
            "and extrapolated linearly, a lower bound)"
        )
        return estimate, note


def stream_in_child(mib: int) -> Tuple[float, float]:
    """(seconds, peak RSS growth in MiB) for a ``mib`` MiB message, in a fresh process."""
    output = subprocess.run(
        [sys.executable, __file__, "--stream-only", str(mib)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(output[0]), float(output[1])


def stream_message(mib: int) -> Tuple[float, float]:
    import resource

    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from imapsync.imap._protocol import IMAP4ClientProtocol
    from imapsync.imap.session import IMAPSession
    from imapsync.imap.uidset import UIDSet

    protocol = IMAP4ClientProtocol(Clock())
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n")
    session = IMAPSession(protocol)
    sizes: List[int] = []
    done = session.fetch_messages(UIDSet.parse(b"1"), lambda m: sizes.append(len(m.body)))
    size = mib * 2**20
    piece = (b"x" * 78 + b"\r\n") * (64 * 1024 // 80)
    chunk = piece[: 64 * 1024]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    protocol.dataReceived(b"* 1 FETCH (UID 1 FLAGS () BODY[] {%d}\r\n" % size)
    left = size
    while left:
        data = chunk[: min(left, len(chunk))]
        protocol.dataReceived(data)
        left -= len(data)
    protocol.dataReceived(b")\r\n1 OK done\r\n")
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert done.called and sizes == [size], sizes
    return elapsed, (after - before) / 1024


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__)
    arguments.add_argument("--lines", type=int, default=100_000)
    arguments.add_argument("--stream-mib", type=int, default=50)
    arguments.add_argument("--twisted-only", nargs=2, type=int, help=argparse.SUPPRESS)
    arguments.add_argument("--stream-only", type=int, help=argparse.SUPPRESS)
    options = arguments.parse_args()
    if options.stream_only:
        print(*stream_message(options.stream_only))
        return
    if options.twisted_only:
        lines, chunk = options.twisted_only
        print(time_twisted(make_lines(lines), chunk, lines))
        return

    data = make_lines(options.lines)
    first = data[: data.index(b"\r\n")].decode()
    print(
        f"{options.lines} lines like {first!r}, "
        f"{len(data) / 2**20:.1f} MiB, Python {sys.version.split()[0]}"
    )
    for label, chunk in CHUNKS:
        # Best of three: ours is fast enough that noise matters.
        ours = min(time_ours(data, chunk, options.lines) for _ in range(3))
        theirs, note = twisted_in_child(options.lines, chunk)
        print(f"{label:>6} chunks: ResponseParser {ours:6.3f} s")
        print(f"{label:>6} chunks: IMAP4Client    {theirs:6.3f} s{note}")
        print(f"{label:>6} chunks: IMAP4Client / ResponseParser = {theirs / ours:.1f}x")
    if options.stream_mib:
        seconds, growth = stream_in_child(options.stream_mib)
        print(
            f"fetch_messages, one {options.stream_mib} MiB message in 64 KiB reads: "
            f"{seconds:.2f} s, peak RSS grew by {growth:.1f} MiB "
            f"({growth / options.stream_mib:.2f}x the message)"
        )


if __name__ == "__main__":
    main()

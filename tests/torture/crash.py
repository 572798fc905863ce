#!/usr/bin/env python3
"""The crash torture's long run: ``tests/torture/crash.py --rounds 200``.

Each round seeds random changes on both Dovecot stores (new messages of
random size, some of 1 to 3 MiB, flag changes, conflicting flag changes,
expunges, new and deleted mailboxes), starts ``imapsync --oneshot``,
SIGKILLs it at a random moment (uniform over a run's length), sometimes
kills the next run too, lets a clean run finish, and checks that both
stores hold what the users' changes say (each message once, by content
hash, with its flags) and that ``--repair`` finds nothing.  Fresh stores
every ``--per-sandbox`` rounds (their first sync is killed too).

Prints ``rounds``, ``kills`` and ``anomalies`` (must be 0); exits 1 if
any anomaly was found.  ``make check`` runs the short variant
(``tests.test_crash_dovecot.CrashTests.test_random_crashes``, 3 rounds);
trial collects only ``test_*`` modules, so not this one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPOSITORY))

from twisted.trial.unittest import SynchronousTestCase  # noqa: E402

from tests.test_crash_dovecot import Torture, crash_seed  # noqa: E402


class _Harness(SynchronousTestCase):
    """A test case for the sandboxes' assertions and cleanups, outside trial."""

    def runTest(self) -> None:  # pragma: no cover - never run
        """Unused: the torture only borrows the assertions."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument(
        "--seed", type=int, default=None, help="default: IMAPSYNC_CRASH_SEED or random"
    )
    parser.add_argument("--per-sandbox", type=int, default=25, help="rounds on the same stores")
    parser.add_argument("--second-kill", type=float, default=0.3, help="probability")
    parser.add_argument(
        "--delete", type=float, default=0.2, help="probability of a deleted mailbox"
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="copy the sandbox of each anomaly here"
    )
    parser.add_argument("--stop", action="store_true", help="stop at the first anomaly")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else crash_seed()
    harness = _Harness()  # type: ignore[no-untyped-call]
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s] {text}", flush=True)

    torture = Torture(
        harness,
        seed,
        second_kill=args.second_kill,
        delete=args.delete,
        per_sandbox=args.per_sandbox,
        keep_going=not args.stop,
        keep=args.keep,
        progress=progress,
    )
    try:
        figures = torture.run(args.rounds)
    finally:
        harness.doCleanups()
    print(figures.summary())
    print(f"rounds: {figures.rounds}")
    print(f"kills: {figures.kills}")
    print(f"anomalies: {len(figures.anomalies)}")
    for anomaly in figures.anomalies:
        print(f"  {anomaly}")
    return 1 if figures.anomalies else 0


if __name__ == "__main__":
    sys.exit(main())

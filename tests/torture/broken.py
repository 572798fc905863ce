"""Broken connections, the long run: random faults over rounds of random changes.

    nice python -m tests.torture.broken --rounds 100 [--seed N] [--keep]

Not collected by trial (its name does not start with ``test_``).  The local
side is a Dovecot tunnel store, the remote a Dovecot daemon on 127.0.0.1
behind a `FaultProxy`.  Each round changes both stores at random (messages
added, some of several hundred KiB, flags changed, messages expunged) and
updates a model of which messages each mailbox must hold, then:

1. a faulty run: one random fault (cut, stall or trickle; either
   direction; at a random byte offset, or in a literal or a tagged
   response), the remote connection's COMPRESS on or off; it must exit 0
   or 1 within a bound, without a traceback, and with exit 1 say why on
   ERROR lines that name a lost connection or a timeout;
2. a clean run, which must exit 0;
3. a check: both stores equal (messages and flags), each mailbox holding
   exactly the model's messages, once each; and a third run adds nothing.

Anything else is an anomaly, printed as it happens.  The summary gives
rounds, faults fired by mode, and anomalies (expected: 0); the exit status
is 1 if there was any anomaly.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Counter, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.dovecot import DovecotDaemon, DovecotStore, MailStore, find_dovecot
from tests.faultproxy import CUT, DOWN, STALL, TRICKLE, UP, Fault, FaultProxy
from tests.test_broken_dovecot import (
    APPEND_LITERAL,
    FETCH_LITERAL,
    LOST,
    TIMEOUT_WRAPPER,
    contents,
    digest,
    message,
)

REPOSITORY = Path(__file__).resolve().parents[2]
# The command timeout of the faulty runs (seconds), and the bound on any run.
COMMAND_TIMEOUT = 3.0
RUN_TIMEOUT = 90.0
MAILBOXES = ("INBOX", "Archive", "Work")
FLAGS = ("\\Seen", "\\Flagged", "\\Answered", "$Label1")
# What an ERROR line of a faulty run may say.
EXPECTED_ERROR = re.compile(LOST + r"|no answer from the server")


class Torture:
    def __init__(self, directory: Path, seed: int, verbose: bool) -> None:
        self.directory = directory
        self.random = random.Random(seed)
        self.verbose = verbose
        self.local: MailStore = DovecotStore(directory / "local", "/", "local")
        self.daemon = DovecotDaemon(directory / "daemon", {"alice": "secret"}, separator=".")
        self.daemon.start()
        assert self.daemon.imap_port is not None
        self.remote: MailStore = self.daemon.store("alice")
        self.proxy = FaultProxy(self.daemon.imap_port)
        self.env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
            path = directory / name.lower()
            path.mkdir()
            self.env[name] = str(path)
        self.env.pop("IMAPSYNC_DEBUG", None)
        self.config = directory / "config"
        # The model: mailbox -> multiset of body hashes.
        self.model: Dict[str, Counter[str]] = collections.defaultdict(collections.Counter)
        self.serial = 0
        self.counts: Counter[str] = collections.Counter()
        self.anomalies: List[str] = []

    def close(self) -> None:
        self.proxy.close()
        self.daemon.stop()

    # -- helpers -----------------------------------------------------------------

    def log(self, text: str) -> None:
        if self.verbose:
            print(text, flush=True)

    def anomaly(self, round_: int, text: str) -> None:
        self.anomalies.append(f"round {round_}: {text}")
        print(f"ANOMALY round {round_}: {text}", flush=True)

    def write_config(self, compress: bool) -> None:
        self.config.write_text(
            f"database = {self.directory / 'state.db'}\n"
            f"[local]\ntype = tunnel\ncommand = {self.local.tunnel_command}\n"
            f"[remote]\ntype = imap\nhost = 127.0.0.1\nport = {self.proxy.port}\n"
            "STARTTLS = NO\nusername = alice\npassword = secret\n"
            f"compress = {'YES' if compress else 'NO'}\n"
        )
        os.chmod(self.config, 0o600)

    def run(self, argv: Sequence[str]) -> Tuple[Optional[int], str, float]:
        """(status or None if it had to be killed, stderr, seconds)."""
        start = time.monotonic()
        process = subprocess.Popen(
            list(argv),
            cwd=REPOSITORY,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = process.communicate(timeout=RUN_TIMEOUT)
            status: Optional[int] = process.returncode
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate(timeout=10)
            status = None
        text = (out + err).decode("utf-8", "replace")
        return status, text, time.monotonic() - start

    # -- a round -----------------------------------------------------------------

    def change(self, store: MailStore, side: str) -> Tuple[int, bool]:
        """Random changes to one store, reflected in the model; return the
        bytes added and whether a big message was."""
        rng = self.random
        added, big = 0, False
        existing = set(store.list_mailboxes())
        for _ in range(rng.randint(0, 4)):
            mailbox = rng.choice(MAILBOXES)
            if mailbox not in existing:
                store.create_mailbox(mailbox)
                existing.add(mailbox)
            self.serial += 1
            size = rng.randint(100, 400) * 1024 if rng.random() < 0.2 else 0
            body = message(f"{side} {self.serial}", size)
            flags = rng.sample(FLAGS, rng.randint(0, 2))
            store.append(mailbox, body, flags)
            added += len(body)
            big = big or size > 0
            self.model[mailbox][digest(body)] += 1
        for mailbox in rng.sample(sorted(existing), len(existing)):
            messages = store.messages(mailbox)
            if not messages:
                continue
            if rng.random() < 0.5:
                target = rng.choice(messages)
                store.set_flags(mailbox, target.uid, rng.sample(FLAGS, 2))
            if rng.random() < 0.3:
                target = rng.choice(messages)
                store.expunge(mailbox, target.uid)
                self.model[mailbox][target.sha256] -= 1
        return added, big

    def fault(self, compress: bool, up: Tuple[int, bool], down: Tuple[int, bool]) -> Fault:
        """A random fault; ``up`` and ``down``: what the run will send that way
        (bytes of new messages, whether one is big), to aim inside the traffic."""
        rng = self.random
        mode = rng.choices((CUT, STALL, TRICKLE), (6, 2, 2))[0]
        direction = rng.choice((UP, DOWN))
        places = ["offset"]
        if not compress:
            places.append("tagged")
            if (up if direction == UP else down)[1]:
                places.append("literal")
        where = rng.choice(places)
        fault = Fault(mode, direction)
        if where == "offset":
            # Commands and listings, then the new messages' bodies.
            traffic = 3_000 + (up if direction == UP else down)[0]
            fault.after = rng.randint(0, traffic // 2 if compress else traffic)
        elif where == "literal":
            fault.pattern = APPEND_LITERAL if direction == UP else FETCH_LITERAL
            fault.skip = rng.randint(0, 90_000)
        else:
            fault.direction = DOWN
            fault.pattern = rb"\n\d+ (OK|NO|BAD) "
            fault.nth = rng.randint(1, 12)
            fault.skip = rng.randint(1, 12)
        if mode == CUT:
            fault.reset = rng.random() < 0.3
        elif mode == STALL:
            fault.seconds = rng.choice((0.5, 1.0, COMMAND_TIMEOUT + 1, COMMAND_TIMEOUT + 3))
        else:
            fault.delay = rng.choice((0.0, 0.0001))
            fault.length = rng.randint(100, 4000)
        return fault

    def round(self, number: int) -> None:
        up = self.change(self.local, "L")
        down = self.change(self.remote, "R")
        compress = self.random.random() < 0.3
        self.write_config(compress)
        fault = self.fault(compress, up, down)
        self.proxy.arm(fault)
        argv = [
            sys.executable,
            "-c",
            TIMEOUT_WRAPPER,
            str(COMMAND_TIMEOUT),
            "-c",
            str(self.config),
            "-1",
        ]
        status, text, seconds = self.run(argv)
        self.proxy.disarm()
        self.proxy.cut_all()
        fired = fault.fired > 0
        if fired:
            self.counts[fault.mode] += 1
        else:
            self.counts["not fired"] += 1
        self.counts[f"faulty exit {status}"] += 1
        describe = (
            f"{fault.mode} {fault.direction} after={fault.after} pattern={fault.pattern!r} "
            f"nth={fault.nth} skip={fault.skip} compress={compress} fired={fired}"
        )
        self.log(f"round {number}: {describe}: exit {status} in {seconds:.1f} s")
        if status is None:
            self.anomaly(number, f"faulty run hung ({describe})\n{text}")
        elif "Traceback" in text:
            self.anomaly(number, f"traceback ({describe})\n{text}")
        elif status not in (0, 1):
            self.anomaly(number, f"faulty run exit {status} ({describe})\n{text}")
        elif status == 1:
            errors = [line for line in text.splitlines() if "ERROR" in line]
            if not errors or not all(EXPECTED_ERROR.search(line) for line in errors):
                self.anomaly(number, f"unclear errors ({describe})\n{text}")
        elif fired and fault.mode == CUT:
            # Cut after the last command that mattered (LOGOUT): fine.
            self.counts["cut, exit 0"] += 1
        self.clean(number, describe)

    def clean(self, number: int, describe: str) -> None:
        argv = [sys.executable, "-m", "imapsync", "-c", str(self.config), "-1"]
        status, text, seconds = self.run(argv)
        if status != 0 or "Traceback" in text:
            self.anomaly(number, f"clean run exit {status} after ({describe})\n{text}")
            return
        local, remote = self.local.snapshot(), self.remote.snapshot()
        if local != remote:
            self.anomaly(number, f"stores differ after ({describe})\n{text}")
        found = {path: counts for path, counts in contents(local).items() if +counts}
        expected = {(name,): +counts for name, counts in self.model.items() if +counts}
        if found != expected:
            extra = {p: c - expected.get(p, collections.Counter()) for p, c in found.items()}
            missing = {p: c - found.get(p, collections.Counter()) for p, c in expected.items()}
            self.anomaly(
                number,
                f"model mismatch after ({describe}): extra { ({p: dict(c) for p, c in extra.items() if c}) } "
                f"missing { ({p: dict(c) for p, c in missing.items() if c}) }\n{text}",
            )
        status, text, _ = self.run(argv)
        if status != 0 or re.search(r"Added|ERROR|Traceback", text):
            self.anomaly(number, f"third run not idle after ({describe})\n{text}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds (default 20)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per round")
    args = parser.parse_args(argv)
    if find_dovecot() is None:
        print("Dovecot 2.3 not found", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    directory = Path(tempfile.mkdtemp(prefix="imapsync-torture-"))
    print(f"seed {seed}, directory {directory}", flush=True)
    start = time.monotonic()
    torture = Torture(directory, seed, args.verbose)
    try:
        for number in range(1, args.rounds + 1):
            torture.round(number)
    finally:
        torture.close()
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    counts = torture.counts
    print(
        f"rounds {args.rounds}, cuts {counts[CUT]}, stalls {counts[STALL]}, "
        f"trickles {counts[TRICKLE]}, faults not reached {counts['not fired']}, "
        f"faulty runs exiting 1: {counts['faulty exit 1']}, "
        f"cuts with exit 0: {counts['cut, exit 0']}, "
        f"anomalies {len(torture.anomalies)}, {time.monotonic() - start:.0f} s"
    )
    return 1 if torture.anomalies else 0


if __name__ == "__main__":
    sys.exit(main())

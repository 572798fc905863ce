# -*- test-case-name: tests.test_demo -*-
"""The demo itself: seed two Dovecot stores, run the real command three times
with changes on both sides in between, check the stores after each run.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, TextIO, Tuple

import attrs

from demo.corpus import CEST, Corpus, Mail
from tests.dovecot import DovecotError, DovecotStore, MailStore, Snapshot

REPOSITORY = Path(__file__).resolve().parent.parent
# A run of the demo's size takes a second or two; this only stops a hang.
RUN_TIMEOUT = 60.0
SIDES = ("local", "remote")
SUMMARY_RE = re.compile(
    r"(?P<side>local|remote): (?P<added>\d+) message\(s\) added \([^)]*\), "
    r"(?P<removed>\d+) removed, (?P<flags>\d+) flag update\(s\);"
)
CREATED_RE = re.compile(r"(?P<side>local|remote): Created mailbox ")


class DemoError(Exception):
    """Something the user should hear about in one line, without a traceback."""


@attrs.frozen
class SideCounts:
    added: int
    removed: int
    flags: int
    mailboxes: int

    @property
    def idle(self) -> bool:
        return not (self.added or self.removed or self.flags or self.mailboxes)


@attrs.frozen
class RunResult:
    """One ``imapsync --oneshot`` run, as the user saw it."""

    title: str
    seconds: float
    counts: Dict[str, SideCounts]
    conflicts: int
    mailboxes: int
    messages: int

    @classmethod
    def parse(
        cls, title: str, seconds: float, lines: Sequence[str], snapshot: Snapshot
    ) -> RunResult:
        summaries = {}
        created = dict.fromkeys(SIDES, 0)
        for line in lines:
            if match := SUMMARY_RE.match(line):
                summaries[match["side"]] = match
            elif match := CREATED_RE.match(line):
                created[match["side"]] += 1
        missing = [side for side in SIDES if side not in summaries]
        if missing:
            raise DemoError(f"{title}: imapsync printed no summary line for {', '.join(missing)}")
        counts = {
            side: SideCounts(
                int(summaries[side]["added"]),
                int(summaries[side]["removed"]),
                int(summaries[side]["flags"]),
                created[side],
            )
            for side in SIDES
        }
        return cls(
            title,
            seconds,
            counts,
            sum("Conflicting flag update" in line for line in lines),
            len(snapshot),
            sum(len(messages) for messages in snapshot.values()),
        )


@attrs.define
class Demo:
    """Two stores, a config file and a database under ``directory``."""

    directory: Path
    out: TextIO
    local: DovecotStore = attrs.field(init=False)
    remote: DovecotStore = attrs.field(init=False)
    corpus: Corpus = attrs.field(factory=Corpus)
    config: Path = attrs.field(init=False)
    runs: List[RunResult] = attrs.field(factory=list)
    #: What was seeded on the local side: mailbox -> [(uid, mail)].
    seeded: Dict[Tuple[str, ...], List[Tuple[int, Mail]]] = attrs.field(factory=dict)

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # -- set-up -------------------------------------------------------------

    def create_stores(self) -> None:
        self.local = DovecotStore(self.directory / "local", "/", "local")
        self.remote = DovecotStore(self.directory / "remote", ".", "remote")
        self.say(
            f"Two throwaway Dovecot {self.local.paths.version.split()[0]} stores in {self.directory}:"
        )
        self.say('  local   hierarchy separator "/"   (Work/Projects/Alpha)')
        self.say('  remote  hierarchy separator "."   (Work.Projects.Alpha)')
        self.say()

    def seed(self) -> None:
        started = time.monotonic()
        total = size = 0
        for store, mailboxes in (
            (self.local, self.corpus.local_mailboxes()),
            (self.remote, self.corpus.remote_mailboxes()),
        ):
            self.say(f"Seeding {store.name}:")
            for path, mails in mailboxes.items():
                name = store.mailbox_name(*path)
                if path != ("INBOX",):
                    store.create_mailbox(name)
                store.subscribe(name)
                uids = store.append_many(name, (mail.append_item() for mail in mails))
                if store is self.local:
                    self.seeded[path] = list(zip(uids, mails, strict=True))
                total += len(mails)
                size += sum(len(mail.raw) for mail in mails)
                self.say(f"  {name:<22} {len(mails):>4} messages  {_describe(mails)}")
        self.say(
            f"  {total} messages, {size / 1024:.0f} KiB, seeded in {time.monotonic() - started:.1f} s"
        )
        self.say()

    def write_config(self) -> None:
        self.config = self.directory / "imapsync.conf"
        self.config.write_text(
            "# Written by demo/run.py: both servers are tunnels to throwaway Dovecot stores.\n"
            f"database = {self.directory / 'imapsync.db'}\n"
            "\n[local]\ntype = tunnel\n"
            f"command = {self.local.tunnel_command}\n"
            "\n[remote]\ntype = tunnel\n"
            f"command = {self.remote.tunnel_command}\n",
            encoding="utf-8",
        )

    # -- runs -----------------------------------------------------------------

    def imapsync(self, title: str) -> RunResult:
        """Run the real command, show its lines as they come, check the stores."""
        argv = [sys.executable, "-m", "imapsync", "-c", str(self.config), "--oneshot"]
        self.say(f"Run {len(self.runs) + 1}: {title}")
        self.say(f"  $ {_display_command(argv)}")
        env = dict(
            os.environ,
            # Nothing of the user's own imapsync set-up is read or written.
            XDG_CONFIG_HOME=str(self.directory / "config"),
            XDG_DATA_HOME=str(self.directory / "data"),
        )
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                argv,
                cwd=REPOSITORY,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except OSError as e:
            raise DemoError(f"cannot run {argv[0]}: {e}")
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            process.kill()

        watchdog = threading.Timer(RUN_TIMEOUT, kill)
        watchdog.start()
        lines = []
        try:
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                lines.append(line)
                self.say(f"    | {line}")
            status = process.wait()
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
        seconds = time.monotonic() - started
        if timed_out.is_set():
            raise DemoError(f"imapsync did not finish within {RUN_TIMEOUT:.0f} s: killed")
        if any(line.startswith("Traceback") for line in lines):
            raise DemoError("imapsync crashed with a Python traceback (shown above)")
        if status != 0:
            raise DemoError(f"imapsync exited with status {status} (its messages are above)")
        snapshot = self.verify(f"after run {len(self.runs) + 1}")
        result = RunResult.parse(title, seconds, lines, snapshot)
        self.runs.append(result)
        self.say(
            f"  exit 0 in {seconds:.2f} s; stores identical: yes "
            f"({result.mailboxes} mailboxes, {result.messages} messages, same subscriptions)"
        )
        self.say()
        return result

    def verify(self, when: str) -> Snapshot:
        """Both stores hold the same messages with the same flags, or DemoError."""
        local, remote = self.local.snapshot(), self.remote.snapshot()
        if local != remote:
            raise DemoError(f"the stores differ {when}: {_difference(local, remote)}")
        local_subscribed = self.local.subscriptions()
        remote_subscribed = self.remote.subscriptions()
        if local_subscribed != remote_subscribed:
            only = sorted(local_subscribed ^ remote_subscribed)
            raise DemoError(
                f"the subscriptions differ {when}: {', '.join('/'.join(p) for p in only)}"
            )
        problems = self.local.log_problems() + self.remote.log_problems()
        if problems:
            raise DemoError(f"Dovecot logged errors {when}: {problems[0]}")
        return local

    # -- changes between runs -----------------------------------------------

    def change_both_sides(self) -> None:
        """What a day of mail does: reading, flagging, deleting, new mail, on both."""
        self.say("Changes on both sides while imapsync is not running:")
        local, remote = self.local, self.remote
        inbox = self.seeded[("INBOX",)]

        # The same message flagged differently on each side: a conflict.
        conflict_uid, conflict = next((u, m) for u, m in inbox if m.flags == ("\\Seen",))
        remote_conflict = _remote_uids(remote, "INBOX", [conflict])[0]
        local.set_flags("INBOX", conflict_uid, ["\\Seen", "\\Answered"])
        remote.set_flags("INBOX", remote_conflict, ["\\Flagged", "$Label2"], mode="add")
        self.change("local", "INBOX", f"UID {conflict_uid} answered (+\\Answered)")
        self.change(
            "remote",
            "INBOX",
            f"UID {remote_conflict}, the same message, flagged (+\\Flagged $Label2): a conflict",
        )

        unread = [u for u, m in inbox if "\\Seen" not in m.flags][:5]
        local.set_flags("INBOX", unread, ["\\Seen"], mode="add")
        self.change("local", "INBOX", f"{len(unread)} messages read (+\\Seen)")
        alpha = [u for u, m in self.seeded[("Work", "Projects", "Alpha")] if not m.flags][:2]
        alpha = alpha or [self.seeded[("Work", "Projects", "Alpha")][0][0]]
        local.set_flags("Work/Projects/Alpha", alpha, ["\\Flagged", "$Label1"], mode="add")
        self.change(
            "local", "Work/Projects/Alpha", f"{len(alpha)} messages flagged (+\\Flagged $Label1)"
        )
        old = [u for u, _ in self.seeded[("Lists", "twisted")][:6]]
        local.expunge("Lists/twisted", old)
        self.change("local", "Lists/twisted", f"{len(old)} old messages deleted")
        fresh = datetime.datetime(2026, 10, 1, 8, 0, tzinfo=CEST)
        new_local = self.corpus.messages("inbox", 3, fresh)
        local.append_many("INBOX", (m.append_item() for m in new_local))
        self.change("local", "INBOX", f"{len(new_local)} new messages")

        remote_unread = [
            info.uid for info in remote.messages("INBOX") if "\\Seen" not in info.flags
        ][:3]
        remote.set_flags("INBOX", remote_unread, ["\\Seen"], mode="add")
        self.change(
            "remote", "INBOX", f"{len(remote_unread)} messages read on the phone (+\\Seen)"
        )
        archive = [m for _, m in self.seeded[("Archive", "2025")][:4]]
        remote.expunge("Archive.2025", _remote_uids(remote, "Archive.2025", archive))
        self.change("remote", "Archive.2025", f"{len(archive)} messages deleted")
        new_remote = self.corpus.messages("inbox", 2, fresh, unread=True)
        remote.append_many("INBOX", (m.append_item() for m in new_remote))
        self.change("remote", "INBOX", f"{len(new_remote)} new messages")
        new_alpha = self.corpus.messages("alpha", 1, fresh, unread=True)
        remote.append_many("Work.Projects.Alpha", (m.append_item() for m in new_alpha))
        self.change("remote", "Work.Projects.Alpha", "1 new message")
        remote.create_mailbox("Work.Projects.Beta", subscribe=True)
        beta = self.corpus.messages("alpha", 3, fresh)
        remote.append_many("Work.Projects.Beta", (m.append_item() for m in beta))
        self.change("remote", "Work.Projects.Beta", f"new mailbox, {len(beta)} messages")
        self.say()

    def change(self, side: str, mailbox: str, what: str) -> None:
        self.say(f"  {side:<7} {mailbox:<22} {what}")

    # -- the report -----------------------------------------------------------

    def report(self) -> None:
        """Per run and side: messages added, removed, flag updates, mailboxes created."""
        side = f"{'added':>6}{'removed':>8}{'flags':>6}{'mboxes':>7} "
        self.say("Summary:")
        self.say(f"  {'':<34}| {'local':^27}| {'remote':^27}|")
        header = f"  {'run':<24}{'time':>9} |{side}|{side}| conflicts  identical"
        self.say(header)
        self.say("  " + "-" * (len(header) - 2))
        for number, run in enumerate(self.runs, 1):
            cells = "".join(
                f"|{c.added:>6}{c.removed:>8}{c.flags:>6}{c.mailboxes:>7} "
                for c in (run.counts[name] for name in SIDES)
            )
            self.say(
                f"  {f'{number}. {run.title}':<24}{run.seconds:>7.2f} s {cells}"
                f"|{run.conflicts:>10}  {'yes':>9}"
            )
        self.say()
        self.say(f"stores identical: yes (after each of the {len(self.runs)} runs)")
        self.say()

    def explain_real_servers(self) -> None:
        imap = self.local.paths.imap
        self.say("To sync real servers, write a config file, e.g. ~/.config/imapsync/config:")
        self.say()
        for line in (
            "# Readable by you only (chmod 600): it holds a password.",
            "database = imap.example.org.db",
            "",
            "[local]",
            "type = tunnel",
            f"command = {imap}",
            "null-stderr = YES",
            "",
            "[remote]",
            "type = imaps",
            "host = imap.example.org",
            "username = me@example.org",
            "password = secret",
        ):
            self.say(f"    {line}".rstrip())
        self.say()
        self.say('then run it once, or as a daemon (see README.md, "Running it"):')
        self.say()
        self.say("    .venv/bin/imapsync --oneshot          # or: imapsync -c FILE --oneshot")
        self.say("    .venv/bin/twistd -n imapsync --oneshot")
        self.say()


def _remote_uids(store: MailStore, mailbox: str, mails: Iterable[Mail]) -> List[int]:
    """The remote UIDs of messages seeded locally (same bytes once synced)."""
    by_digest = {info.sha256: info.uid for info in store.messages(mailbox)}
    try:
        return [by_digest[hashlib.sha256(mail.raw).hexdigest()] for mail in mails]
    except KeyError:
        raise DemoError(f"a message seeded locally is missing from remote {mailbox}")


def _describe(mails: Sequence[Mail]) -> str:
    unread = sum("\\Seen" not in m.flags for m in mails)
    flagged = sum("\\Flagged" in m.flags for m in mails)
    multipart = sum(b"multipart/mixed" in m.raw[:2000] for m in mails)
    utf8 = sum(not m.raw.isascii() for m in mails)
    return f"({unread} unread, {flagged} flagged, {multipart} with attachments, {utf8} 8-bit)"


def _display_command(argv: Sequence[str]) -> str:
    """``argv`` as a shell command, the interpreter relative to the repository
    (where make runs it) when it is the project's virtualenv."""
    shown = list(argv)
    relative = os.path.relpath(argv[0], REPOSITORY)
    if not relative.startswith(".."):
        shown[0] = relative
    return shlex.join(shown)


def _difference(local: Snapshot, remote: Snapshot) -> str:
    problems = []
    for path in sorted(set(local) | set(remote)):
        name = "/".join(path)
        if path not in remote:
            problems.append(f"{name} only on local")
        elif path not in local:
            problems.append(f"{name} only on remote")
        elif local[path] != remote[path]:
            problems.append(
                f"{name} ({len(local[path])} local, {len(remote[path])} remote messages, "
                f"{len(set(local[path]) ^ set(remote[path]))} differing)"
            )
    return "; ".join(problems)


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="demo/run.py",
        description="Sync two throwaway local Dovecot stores with the real imapsync command.",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (stores, config, database) instead of removing it",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    options = parse_arguments(argv)
    started = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="imapsync-demo-"))
    demo = Demo(directory, out)
    try:
        demo.create_stores()
        demo.seed()
        demo.write_config()
        demo.imapsync("first sync")
        demo.change_both_sides()
        demo.imapsync("after changes")
        last = demo.imapsync("nothing left to do")
        busy = [side for side in SIDES if not last.counts[side].idle]
        if busy:
            raise DemoError(f"the third run still changed {' and '.join(busy)}")
        demo.report()
        demo.explain_real_servers()
    except (DemoError, DovecotError) as e:
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        if options.keep or (directory / "imapsync.conf").exists():
            print(f"The demo's files are kept for a look: {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)
        return 1
    except KeyboardInterrupt:
        shutil.rmtree(directory, ignore_errors=True)
        print("Interrupted.", file=sys.stderr)
        return 130
    if options.keep:
        demo.say(f"The demo's stores, config file and database are kept in {directory}")
        again = _display_command([sys.executable, "-m", "imapsync", "-c", str(demo.config), "-1"])
        demo.say(f"(sync them again: {again})")
    else:
        shutil.rmtree(directory, ignore_errors=True)
        demo.say(
            f"Removed the demo's temporary directory {directory}"
            " (keep it with `make demo DEMO_ARGS=--keep` or `demo/run.py --keep`)."
        )
    demo.say(f"Demo done in {time.monotonic() - started:.1f} s.")
    return 0

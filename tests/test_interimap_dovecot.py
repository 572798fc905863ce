# -*- test-case-name: tests.test_interimap_dovecot -*-
"""imapsync next to interimap 0.5.7 (the reference) on real Dovecot.

Differential: the same fixture synced by each tool in its own copy must
end the same. Migration: imapsync carries on from interimap's config file
and database with nothing copied again, and interimap from imapsync's.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sqlite3
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Tuple
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

from tests.dovecot import Snapshot
from tests.test_crash_dovecot import (
    Model,
    Run,
    Sandbox,
    describe,
    differences,
    random_changes,
    random_flags,
    uids_by_digest,
)


def require_interimap(testcase: SynchronousTestCase) -> str:
    """interimap's path; skip if missing, except under CI where that fails."""
    path = shutil.which("interimap")
    if path is not None:
        return path
    message = "interimap is not installed (Debian package interimap): differential tests skipped"
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        testcase.fail(message + " (required under CI)")
    raise SkipTest(message)


def seed_fixture(box: Sandbox, rng: random.Random, model: Model) -> None:
    """What both servers hold before the first sync: shared and one-sided
    mailboxes, an empty one, a name with a space, a non-ASCII name, flags
    and keywords, subscriptions."""

    def some(tag: str, count: int) -> List[Tuple[bytes, FrozenSet[str]]]:
        return [
            (box.message(tag, rng.randrange(300, 4000)), random_flags(rng)) for _ in range(count)
        ]

    box.add(model, box.local, ("INBOX",), some("li", 60))
    box.add(model, box.remote, ("INBOX",), some("ri", 40))
    box.add(model, box.local, ("Archive", "2020"), some("la", 50))
    box.add(model, box.remote, ("Lists", "Dev"), some("rl", 30))
    box.add(model, box.local, ("Caf\u00e9", "\u65e5\u672c"), some("lc", 5))
    box.add(model, box.local, ("Shared",), some("ls", 20))
    box.add(model, box.remote, ("Shared",), some("rs", 20))
    box.add(model, box.remote, ("Shared", "with space"), some("rw", 3))
    box.add(model, box.local, ("Empty",), [])
    box.local.subscribe(box.local.mailbox_name("Archive", "2020"))
    box.remote.subscribe(box.remote.mailbox_name("Lists", "Dev"))


def state(box: Sandbox) -> Dict[str, object]:
    """All a run could change: messages, flags, dates, subscriptions, UIDNEXT, HIGHESTMODSEQ."""
    result: Dict[str, object] = {}
    for name, store in (("local", box.local), ("remote", box.remote)):
        result[name] = store.snapshot(internaldate=True)
        result[f"{name} subscriptions"] = store.subscriptions()
        counters = {}
        with store.session() as imap:
            listed = imap.command(b"LIST", b'""', b'"*"')
            for response in listed.data(b"LIST"):
                attributes, mailbox = {a.lower() for a in response[1]}, response[3]
                if attributes & {b"\\noselect", b"\\nonexistent"}:
                    continue
                quoted = b'"' + mailbox.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
                status = imap.command(b"STATUS", quoted, b"(UIDNEXT HIGHESTMODSEQ)")
                items = status.data(b"STATUS")[0][2]
                counters[mailbox] = dict(zip(items[::2], items[1::2], strict=True))
        result[f"{name} counters"] = counters
    return result


def activity(run: Run) -> List[str]:
    """The lines of a run that say it changed something, or found something wrong."""
    return run.matching(r"Added|Removed|Updated|Created|(?i:subscri)|WARNING|ERROR|Traceback")


class InterimapTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.interimap = require_interimap(self)

    def run_interimap(self, box: Sandbox, config: Optional[Path] = None, *args: str) -> Run:
        run = box.run([self.interimap, f"--config={config or box.config}", *args])
        self.assertEqual(run.returncode, 0, describe(run))
        self.assertEqual(run.matching(r"ERROR|Traceback|panic"), [], describe(run))
        return run

    def test_same_result(self) -> None:
        """One fixture, two copies: interimap syncs one, imapsync the other,
        twice with changes on both sides in between; the servers end equal
        (bodies, flags, INTERNALDATEs, subscriptions)."""
        seed = int(
            os.environ.get("IMAPSYNC_DIFF_SEED") or random.SystemRandom().randrange(1 << 32)
        )
        context = f"IMAPSYNC_DIFF_SEED={seed}"
        boxes = {"interimap": Sandbox(self, "ref"), "imapsync": Sandbox(self, "ours")}
        models: Dict[str, Model] = {}
        for name, box in boxes.items():
            models[name] = {}
            seed_fixture(box, random.Random(seed), models[name])
        self.assertEqual(boxes["interimap"].local.snapshot(), boxes["imapsync"].local.snapshot())
        outcomes: Dict[str, List[Snapshot]] = {}
        for name, box in boxes.items():
            rng = random.Random(seed + 1)
            model = models[name]
            for step in range(2):
                if step:
                    random_changes(box, rng, model, f"c{step}", big=0.1)
                if name == "interimap":
                    self.run_interimap(box)
                else:
                    box.sync_clean()
                box.check(model, f"{context}, {name} after sync #{step + 1}")
            outcomes[name] = [
                box.local.snapshot(internaldate=True),
                box.remote.snapshot(internaldate=True),
            ]
            self.assertEqual(
                box.local.subscriptions(), box.remote.subscriptions(), f"{context}, {name}"
            )
        for n, side in enumerate(("local", "remote")):
            ours, reference = outcomes["imapsync"][n], outcomes["interimap"][n]
            self.assertEqual(
                ours,
                reference,
                f"{context}: {side}, imapsync vs interimap:\n{differences(ours, reference)}",
            )
        self.assertEqual(
            boxes["imapsync"].local.subscriptions(),
            boxes["interimap"].local.subscriptions(),
            context,
        )

    def test_migration_both_ways(self) -> None:
        """interimap's config and database, used as is by imapsync: nothing
        copied again, then changes flow; interimap then finds nothing to do
        on the database imapsync used, and the other way round again."""
        rng = random.Random(7)
        box = Sandbox(self, "migrate")
        model: Model = {}
        seed_fixture(box, rng, model)
        first = self.run_interimap(box)
        self.assertTrue(first.matching("Added"), describe(first))
        box.check(model, "after interimap")
        self.assertTrue(box.database.exists(), "interimap wrote no database where told")
        before = state(box)

        run = box.sync_clean()
        self.assertEqual(activity(run), [], "imapsync redid interimap's work")
        self.assertEqual(state(box), before, "imapsync changed the stores")

        random_changes(box, rng, model, "is", big=0.1)
        run = box.sync_clean()
        self.assertTrue(run.matching("Added"), describe(run))
        box.check(model, "imapsync after changes")
        before = state(box)

        run = self.run_interimap(box)
        self.assertEqual(activity(run), [], "interimap saw work on imapsync's database")
        self.assertEqual(state(box), before, "interimap changed the stores")

        random_changes(box, rng, model, "ii", big=0.1)
        run = self.run_interimap(box)
        box.check(model, "interimap after changes")
        before = state(box)
        run = box.sync_clean()
        self.assertEqual(activity(run), [], "imapsync redid interimap's work")
        self.assertEqual(state(box), before, "imapsync changed the stores")
        box.repair("after the migrations")

    def test_repair_keeps_the_surviving_copy(self) -> None:
        """--repair where a mapped local message disappeared without the
        database seeing an expunge (its HIGHESTMODSEQ is past it): interimap
        copies the surviving remote message back; imapsync must too, not
        delete what may be the last copy."""
        snapshots = {}
        for tool in ("interimap", "imapsync"):
            box = Sandbox(self, f"repair-{tool}")
            model: Model = {}
            box.add(model, box.local, ("INBOX",), [(box.message("m"), ()) for _ in range(20)])
            if tool == "interimap":
                self.run_interimap(box)
            else:
                box.sync_clean()
            uids = uids_by_digest(box.local, ("INBOX",))
            box.expunge(box.local, ("INBOX",), sorted(uids, key=uids.__getitem__)[3:5])
            status = box.local.status("INBOX")
            with contextlib.closing(sqlite3.connect(box.database)) as db, db:
                db.execute(
                    "UPDATE local SET UIDNEXT = ?, HIGHESTMODSEQ = ?",
                    (status["UIDNEXT"], status["HIGHESTMODSEQ"]),
                )
            if tool == "interimap":
                run = self.run_interimap(box, None, "--repair")
            else:
                run = box.imapsync(None, "--repair")
                self.assertEqual(run.returncode, 0, describe(run))
            snapshots[tool] = (box.local.snapshot(), box.remote.snapshot())
        for n, side in enumerate(("local", "remote")):
            self.assertEqual(
                snapshots["imapsync"][n],
                snapshots["interimap"][n],
                f"{side}, imapsync vs interimap:\n"
                + differences(snapshots["imapsync"][n], snapshots["interimap"][n]),
            )

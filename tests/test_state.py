"""Tests for imapsync.state: the SQLite state database shared with interimap."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from imapsync.state import (
    DatabaseError,
    DatabaseLockedError,
    MailboxExistsError,
    MailboxRow,
    MailboxState,
    SideState,
    StateStore,
)

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# interimap 0.5.7's schema, copied from /usr/bin/interimap (test data): the
# column definitions of each table, joined with ", " as interimap does.
INTERIMAP_SCHEMA = (
    (
        "mailboxes",
        [
            "idx        INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT",
            "mailbox    BLOB COLLATE BINARY NOT NULL CHECK (mailbox != '') UNIQUE",
            "subscribed BOOLEAN NOT NULL",
        ],
    ),
    (
        "local",
        [
            "idx           INTEGER         NOT NULL PRIMARY KEY REFERENCES mailboxes(idx)",
            "UIDVALIDITY   UNSIGNED INT    NOT NULL CHECK (UIDVALIDITY > 0)",
            "UIDNEXT       UNSIGNED INT    NOT NULL",
            "HIGHESTMODSEQ UNSIGNED BIGINT NOT NULL",
        ],
    ),
    (
        "remote",
        [
            "idx           INTEGER         NOT NULL PRIMARY KEY REFERENCES mailboxes(idx)",
            "UIDVALIDITY   UNSIGNED INT    NOT NULL CHECK (UIDVALIDITY > 0)",
            "UIDNEXT       UNSIGNED INT    NOT NULL",
            "HIGHESTMODSEQ UNSIGNED BIGINT NOT NULL",
        ],
    ),
    (
        "mapping",
        [
            "idx  INTEGER      NOT NULL REFERENCES mailboxes(idx)",
            "lUID UNSIGNED INT NOT NULL CHECK (lUID > 0)",
            "rUID UNSIGNED INT NOT NULL CHECK (rUID > 0)",
            "PRIMARY KEY (idx,lUID)",
            "UNIQUE      (idx,rUID)",
        ],
    ),
)
# Version 0 (interimap < 0.5): the same, but names were TEXT with the
# server's hierarchy delimiter in them (NEWS: "alter the mailbox name
# column type from TEXT to BLOB").
INTERIMAP_V0_MAILBOXES = [
    "idx        INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT",
    "mailbox    TEXT NOT NULL CHECK (mailbox != '') UNIQUE",
    "subscribed BOOLEAN NOT NULL",
]

# Opens the database given as argv[1] in another process.
CHILD_OPEN = """
import sys, time
from imapsync.state import DatabaseLockedError, StateStore
start = time.monotonic()
try:
    store = StateStore.open(sys.argv[1])
except DatabaseLockedError as e:
    print("%s|%.3f" % (e, time.monotonic() - start))
    sys.exit(3)
store.close()
print("opened")
"""

# Commits one batch, then dies (no close, no rollback) in the middle of the next.
CHILD_CRASH = """
import os, sys
from imapsync.state import StateStore
store = StateStore.open(sys.argv[1])
idx = int(sys.argv[2])
with store.transaction():
    store.add_mappings(idx, [(1, 1)])
    store.set_state(idx, "local", uidnext=2)
with store.transaction():
    store.add_mappings(idx, [(2, 2)])
    store.set_state(idx, "local", uidnext=3)
    store.journal_add(idx, "remote", [(3, b"d")])
    os._exit(0)
"""


def interimap_database(path: str, version: int = 1) -> sqlite3.Connection:
    """A database as interimap creates it (its statements, its bindings)."""
    conn = sqlite3.connect(path, isolation_level=None)
    for name, columns in INTERIMAP_SCHEMA:
        if version == 0 and name == "mailboxes":
            columns = INTERIMAP_V0_MAILBOXES
        conn.execute(f"CREATE TABLE {name} ({', '.join(columns)})")
    conn.execute(f"PRAGMA user_version = {version}")
    return conn


def schema(path: str) -> List[Tuple[str, str, Optional[str]]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute("SELECT type, name, sql FROM sqlite_master"))
    finally:
        conn.close()


def columns(path: str, table: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA table_info({table})").fetchall()
    finally:
        conn.close()


class StoreTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="imapsync-state-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.path = os.path.join(self.tmp, "state.db")

    def open(self, path: Optional[str] = None) -> StateStore:
        store = StateStore.open(path or self.path)
        self.addCleanup(store.close)
        return store

    def mailbox_with_state(self, store: StateStore, name: bytes = b"INBOX") -> int:
        idx = store.add_mailbox(name, False)
        store.init_state(idx, SideState(11, 0, 0), SideState(22, 0, 0))
        return idx

    def open_elsewhere(self, path: str) -> subprocess.CompletedProcess[str]:
        """StateStore.open from a separate process: the lock is per process."""
        env = dict(os.environ, PYTHONPATH=REPOSITORY)
        return subprocess.run(
            [sys.executable, "-b", "-c", CHILD_OPEN, path],
            cwd=REPOSITORY,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )


class OpenTests(StoreTestCase):
    def test_creates_private_file_and_directory(self) -> None:
        """A missing directory is created 0700 and the file 0600, whatever the umask."""
        path = os.path.join(self.tmp, "data", "imapsync", "host.db")
        old = os.umask(0)
        try:
            self.open(path)
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)

    def test_existing_modes_kept(self) -> None:
        """Like interimap, an existing file or directory keeps its mode."""
        os.chmod(self.tmp, 0o755)
        with open(self.path, "wb"):
            pass
        os.chmod(self.path, 0o640)
        self.open()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        self.assertEqual(stat.S_IMODE(os.stat(self.tmp).st_mode), 0o755)

    def test_second_process_fails_while_open(self) -> None:
        """Another process gets DatabaseLockedError at once, and the database after close."""
        store = StateStore.open(self.path)
        try:
            result = self.open_elsewhere(self.path)
            self.assertEqual(result.returncode, 3, result.stderr)
            message, elapsed = result.stdout.strip().split("|")
            self.assertEqual(message, f"another imapsync is using {self.path}")
            # Well below Python's default busy timeout of 5 s: no waiting.
            self.assertLess(float(elapsed), 2.5)
            # Still locked after our own transactions.
            idx = store.add_mailbox(b"INBOX", True)
            self.assertEqual(store.mailbox(b"INBOX"), MailboxRow(idx, b"INBOX", True))
            self.assertEqual(self.open_elsewhere(self.path).returncode, 3)
        finally:
            store.close()
        result = self.open_elsewhere(self.path)
        self.assertEqual((result.returncode, result.stdout), (0, "opened\n"), result.stderr)

    def test_plain_sqlite_reader_locked_out(self) -> None:
        """Even reads by another program (interimap) are refused while we hold it."""
        self.open()
        conn = sqlite3.connect(self.path, timeout=0)
        self.addCleanup(conn.close)
        with self.assertRaises(sqlite3.OperationalError) as caught:
            conn.execute("SELECT * FROM mailboxes").fetchall()
        self.assertIn("locked", str(caught.exception))

    def test_same_process_second_open(self) -> None:
        self.open()
        self.assertRaises(DatabaseLockedError, StateStore.open, self.path)

    def test_not_a_database(self) -> None:
        with open(self.path, "wb") as f:
            f.write(b"this is not an SQLite database\n" * 100)
        with self.assertRaises(DatabaseError) as caught:
            StateStore.open(self.path)
        self.assertNotIsInstance(caught.exception, DatabaseLockedError)
        self.assertIn(self.path, str(caught.exception))
        self.assertIn("not a database", str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))

    def test_other_sqlite_database(self) -> None:
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE something (x)")
        conn.commit()
        conn.close()
        with self.assertRaises(DatabaseError) as caught:
            StateStore.open(self.path)
        self.assertEqual(
            str(caught.exception),
            f"database {self.path} is not an imapsync or interimap database"
            " (no table local, mailboxes, mapping, remote)",
        )

    def test_newer_version(self) -> None:
        conn = interimap_database(self.path)
        conn.execute("PRAGMA user_version = 2")
        conn.close()
        with self.assertRaises(DatabaseError) as caught:
            StateStore.open(self.path)
        self.assertIn("created by a newer version", str(caught.exception))
        self.assertIn(self.path, str(caught.exception))

    def test_directory_is_a_file(self) -> None:
        with open(os.path.join(self.tmp, "file"), "w"):
            pass
        path = os.path.join(self.tmp, "file", "state.db")
        with self.assertRaises(DatabaseError) as caught:
            StateStore.open(path)
        self.assertIn(os.path.join(self.tmp, "file"), str(caught.exception))

    def test_unwritable(self) -> None:
        """A read-only file or directory is refused at open, not at the first write."""
        if os.geteuid() == 0:
            raise SkipTest("root ignores file permissions")
        self.open().close()
        os.chmod(self.path, 0o400)
        self.assertRaises(DatabaseError, StateStore.open, self.path)
        os.chmod(self.path, 0o600)
        os.chmod(self.tmp, 0o500)
        self.addCleanup(os.chmod, self.tmp, 0o700)
        with self.assertRaises(DatabaseError) as caught:
            StateStore.open(self.path)
        self.assertIn("not writable", str(caught.exception))

    def test_data_survives_reopen(self) -> None:
        store = StateStore.open(self.path)
        idx = self.mailbox_with_state(store)
        store.add_mappings(idx, [(1, 2)])
        store.close()
        store = StateStore.open(self.path)
        self.assertEqual(store.mapping(idx), [(1, 2)])
        self.assertEqual(store.state(idx), MailboxState(SideState(11, 0, 0), SideState(22, 0, 0)))
        store.close()
        # The rollback journal goes with the lock.
        self.assertFalse(os.path.exists(self.path + "-journal"))


class InterimapSchemaTests(StoreTestCase):
    def test_same_schema_as_interimap(self) -> None:
        """Our new database has interimap's tables, columns and SQL, plus the journal."""
        theirs = os.path.join(self.tmp, "interimap.db")
        interimap_database(theirs).close()
        self.open().close()
        ours = schema(self.path)
        extra = [row for row in ours if "imapsync_journal" in row[1]]
        self.assertEqual([row for row in ours if row not in extra], schema(theirs))
        self.assertEqual(
            [(kind, name) for kind, name, _ in extra],
            [("index", "sqlite_autoindex_imapsync_journal_1"), ("table", "imapsync_journal")],
        )
        for table, _ in INTERIMAP_SCHEMA:
            self.assertEqual(columns(self.path, table), columns(theirs, table))
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone(), (1,))

    def test_uses_interimap_database(self) -> None:
        """A database interimap created and filled is used as is."""
        conn = interimap_database(self.path)
        # As interimap writes rows: names as BLOBs with \0 for the delimiter,
        # HIGHESTMODSEQ as a signed 8-byte integer ("%lld").
        conn.execute("INSERT INTO mailboxes (mailbox, subscribed) VALUES (?, ?)", (b"INBOX", 1))
        conn.execute(
            "INSERT INTO mailboxes (mailbox, subscribed) VALUES (?, ?)", (b"Work\0Sub", 0)
        )
        conn.execute("INSERT INTO local VALUES (1, 1700000000, 12, ?)", (-(2**63),))
        conn.execute("INSERT INTO remote VALUES (1, 42, 7, 5)")
        conn.executemany("INSERT INTO mapping VALUES (1, ?, ?)", [(3, 1), (11, 6), (5, 2)])
        conn.close()

        store = self.open()
        self.assertFalse(store.needs_migration())
        self.assertEqual(
            store.mailboxes(), [MailboxRow(1, b"INBOX", True), MailboxRow(2, b"Work\0Sub", False)]
        )
        self.assertEqual(store.mailbox(b"Work\0Sub"), MailboxRow(2, b"Work\0Sub", False))
        self.assertEqual(
            store.state(1),
            MailboxState(SideState(1700000000, 12, 2**63), SideState(42, 7, 5)),
        )
        self.assertIsNone(store.state(2))
        self.assertEqual(store.mapping(1), [(3, 1), (5, 2), (11, 6)])
        self.assertEqual(store.map_uids(1, "remote", [6, 2, 9]), {6: 11, 2: 5})
        self.assertEqual(store.mappings_from(1, 12, 7), [])

        store.set_state(1, "local", uidnext=13, highestmodseq=2**64 - 1)
        store.add_mappings(1, [(12, 7)])
        idx = store.add_mailbox(b"Archive", True)
        store.close()

        # ... and left as interimap reads it.
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        rows = conn.execute("SELECT UIDNEXT, HIGHESTMODSEQ FROM local").fetchall()
        self.assertEqual(rows, [(13, -1)])
        self.assertEqual(
            conn.execute(
                "SELECT mailbox, typeof(mailbox), subscribed, typeof(subscribed)"
                " FROM mailboxes WHERE idx = ?",
                (idx,),
            ).fetchall(),
            [(b"Archive", "blob", 1, "integer")],
        )
        # interimap's interrupted-sync query sees the new pair.
        self.assertEqual(
            conn.execute(
                "SELECT lUID, rUID FROM mapping m JOIN local l ON m.idx = l.idx"
                " JOIN remote r ON m.idx = r.idx WHERE (lUID >= l.UIDNEXT OR rUID >= r.UIDNEXT)"
            ).fetchall(),
            [(12, 7)],
        )

    def test_text_names_made_blobs(self) -> None:
        """Names left as TEXT (interimap's flat-namespace upgrade) are found by name."""
        conn = interimap_database(self.path)
        conn.execute("INSERT INTO mailboxes (mailbox, subscribed) VALUES ('Notes', 0)")
        conn.close()
        store = self.open()
        self.assertEqual(store.mailbox(b"Notes"), MailboxRow(1, b"Notes", False))
        self.assertRaises(MailboxExistsError, store.add_mailbox, b"Notes", True)

    def v0_database(self) -> None:
        conn = interimap_database(self.path, version=0)
        for name, subscribed in (("INBOX", 1), ("Work", 0), ("Work/Sub", 1), ("a.b", 0)):
            conn.execute(
                "INSERT INTO mailboxes (mailbox, subscribed) VALUES (?, ?)", (name, subscribed)
            )
        conn.execute("INSERT INTO local VALUES (3, 5, 10, 20)")
        conn.execute("INSERT INTO remote VALUES (3, 6, 11, 21)")
        conn.execute("INSERT INTO mapping VALUES (3, 9, 10)")
        conn.close()

    def test_migrate_from_v0(self) -> None:
        """Version 0: the delimiter becomes \\0, the rest is kept, the schema is interimap's."""
        self.v0_database()
        store = self.open()
        self.assertTrue(store.needs_migration())
        store.migrate_from_v0(b"/")
        self.assertFalse(store.needs_migration())
        self.assertEqual(
            store.mailboxes(),
            [
                MailboxRow(1, b"INBOX", True),
                MailboxRow(2, b"Work", False),
                MailboxRow(3, b"Work\0Sub", True),
                MailboxRow(4, b"a.b", False),
            ],
        )
        self.assertEqual(store.state(3), MailboxState(SideState(5, 10, 20), SideState(6, 11, 21)))
        self.assertEqual(store.mapping(3), [(9, 10)])
        # Foreign keys are back on, and the journal is there.
        self.assertRaises(sqlite3.IntegrityError, store.add_mappings, 99, [(1, 1)])
        store.journal_add(3, "local", [(1, b"d")])
        self.assertRaises(RuntimeError, store.migrate_from_v0, b"/")
        store.close()

        theirs = os.path.join(self.tmp, "interimap.db")
        interimap_database(theirs).close()
        expected = {name: sql for kind, name, sql in schema(theirs) if kind == "table"}
        # ALTER TABLE ... RENAME quotes the name, as in interimap's own upgrade.
        expected["mailboxes"] = (expected["mailboxes"] or "").replace(
            "mailboxes", '"mailboxes"', 1
        )
        mine = {
            name: sql
            for kind, name, sql in schema(self.path)
            if kind == "table" and name != "imapsync_journal"
        }
        self.assertEqual(mine, expected)
        store = self.open()
        self.assertFalse(store.needs_migration())

    def test_migrate_flat_v0(self) -> None:
        """Without a delimiter names are kept (as BLOBs)."""
        self.v0_database()
        store = self.open()
        store.migrate_from_v0(None)
        self.assertEqual(store.mailbox(b"Work/Sub"), MailboxRow(3, b"Work/Sub", True))

    def test_v0_reopens_unmigrated(self) -> None:
        """Opening alone changes nothing interimap would notice (no journal table yet)."""
        self.v0_database()
        self.open().close()
        self.assertNotIn("imapsync_journal", [name for _, name, _ in schema(self.path)])
        self.assertTrue(self.open().needs_migration())


class MailboxTests(StoreTestCase):
    def test_add_and_subscribe(self) -> None:
        store = self.open()
        inbox = store.add_mailbox(b"INBOX", False)
        work = store.add_mailbox(b"Work", True)
        self.assertNotEqual(inbox, work)
        store.set_subscribed(inbox, True)
        store.set_subscribed(work, False)
        self.assertEqual(
            store.mailboxes(),
            [MailboxRow(inbox, b"INBOX", True), MailboxRow(work, b"Work", False)],
        )
        self.assertIsNone(store.mailbox(b"Other"))
        with self.assertRaises(MailboxExistsError) as caught:
            store.add_mailbox(b"Work", False)
        self.assertEqual(caught.exception.name, b"Work")
        self.assertRaises(ValueError, store.add_mailbox, b"", False)

    def test_mailboxes_sorted_parents_first(self) -> None:
        store = self.open()
        for name in (b"a b", b"a\0b", b"a", b"B"):
            store.add_mailbox(name, False)
        self.assertEqual([m.name for m in store.mailboxes()], [b"B", b"a", b"a\0b", b"a b"])

    def test_rename_with_children(self) -> None:
        store = self.open()
        work = self.mailbox_with_state(store, b"Work")
        sub = store.add_mailbox(b"Work\0Sub", True)
        deep = store.add_mailbox(b"Work\0Sub\0Deep", False)
        other = store.add_mailbox(b"Workshop", False)
        sibling = store.add_mailbox(b"Work2\0x", False)
        store.add_mappings(work, [(1, 1)])
        self.assertEqual(store.rename_mailbox(b"Work", b"Job\0Old"), 3)
        self.assertEqual(
            store.mailboxes(),
            [
                MailboxRow(work, b"Job\0Old", False),
                MailboxRow(sub, b"Job\0Old\0Sub", True),
                MailboxRow(deep, b"Job\0Old\0Sub\0Deep", False),
                MailboxRow(sibling, b"Work2\0x", False),
                MailboxRow(other, b"Workshop", False),
            ],
        )
        # The idx, hence state and mappings, go with the name.
        self.assertEqual(store.mapping(work), [(1, 1)])
        self.assertIsNotNone(store.state(work))

    def test_rename_children_only(self) -> None:
        """Like interimap, a parent unknown to the database still has its children renamed."""
        store = self.open()
        sub = store.add_mailbox(b"p\0c", False)
        self.assertEqual(store.rename_mailbox(b"p", b"q"), 1)
        self.assertEqual(store.mailboxes(), [MailboxRow(sub, b"q\0c", False)])
        self.assertEqual(store.rename_mailbox(b"nothing", b"else"), 0)

    def test_rename_refused(self) -> None:
        store = self.open()
        store.add_mailbox(b"a", False)
        store.add_mailbox(b"a\0x", False)
        store.add_mailbox(b"b", False)
        store.add_mailbox(b"c\0x", False)
        before = store.mailboxes()
        with self.assertRaises(MailboxExistsError) as caught:
            store.rename_mailbox(b"a", b"b")
        self.assertEqual(caught.exception.name, b"b")
        # A child's target taken: nothing renamed, not even the parent.
        with self.assertRaises(MailboxExistsError) as caught:
            store.rename_mailbox(b"a", b"c")
        self.assertEqual(caught.exception.name, b"c\0x")
        self.assertRaises(ValueError, store.rename_mailbox, b"a", b"a\0y")
        self.assertRaises(ValueError, store.rename_mailbox, b"a\0x", b"a")
        self.assertRaises(ValueError, store.rename_mailbox, b"a", b"a")
        self.assertEqual(store.mailboxes(), before)

    def test_delete_cascades(self) -> None:
        store = self.open()
        idx = self.mailbox_with_state(store, b"Work")
        child = self.mailbox_with_state(store, b"Work\0Sub")
        for i in (idx, child):
            store.add_mappings(i, [(1, 2), (2, 3)])
            store.journal_add(i, "remote", [(3, b"x" * 32)])
        store.delete_mailbox(idx)
        self.assertIsNone(store.mailbox(b"Work"))
        self.assertIsNone(store.state(idx))
        self.assertEqual(store.mapping(idx), [])
        self.assertEqual(store.journal(idx, "remote"), {})
        # Not recursive (interimap's --delete neither).
        self.assertEqual(store.mailbox(b"Work\0Sub"), MailboxRow(child, b"Work\0Sub", False))
        self.assertEqual(store.mapping(child), [(1, 2), (2, 3)])
        self.assertEqual(store.journal(child, "remote"), {b"x" * 32: [3]})
        # AUTOINCREMENT: a deleted idx is never handed out again.
        self.assertGreater(store.add_mailbox(b"Work", False), child)

    def test_interimap_delete_removes_journal(self) -> None:
        """interimap's --delete statements, with its foreign keys on, succeed and cascade."""
        store = StateStore.open(self.path)
        idx = self.mailbox_with_state(store)
        store.journal_add(idx, "local", [(1, b"x")])
        store.close()
        conn = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(conn.close)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN")
        for table in ("mapping", "local", "remote", "mailboxes"):
            conn.execute(f"DELETE FROM {table} WHERE idx = ?", (idx,))
        conn.execute("COMMIT")
        self.assertEqual(conn.execute("SELECT COUNT(*) FROM imapsync_journal").fetchone(), (0,))


class StateTests(StoreTestCase):
    def test_init_and_update(self) -> None:
        store = self.open()
        idx = store.add_mailbox(b"INBOX", True)
        self.assertIsNone(store.state(idx))
        store.init_state(idx, SideState(1, 0, 0), SideState(2, 0, 0))
        store.set_state(idx, "local", uidnext=5)
        store.set_state(idx, "remote", highestmodseq=9, uidnext=3)
        store.set_state(idx, "remote")
        self.assertEqual(store.state(idx), MailboxState(SideState(1, 5, 0), SideState(2, 3, 9)))
        self.assertRaises(sqlite3.IntegrityError, store.init_state, idx, *[SideState(1, 0, 0)] * 2)
        self.assertRaises(ValueError, store.set_state, idx, "both", uidnext=1)

    def test_set_state_inserts(self) -> None:
        """Both sides set in one transaction make a pair; one needs UIDVALIDITY."""
        store = self.open()
        idx = store.add_mailbox(b"INBOX", True)
        self.assertRaises(ValueError, store.set_state, idx, "local", uidnext=3)
        with store.transaction():
            store.set_state(idx, "local", uidvalidity=7, highestmodseq=4)
            store.set_state(idx, "remote", uidvalidity=8, uidnext=2)
        self.assertEqual(store.state(idx), MailboxState(SideState(7, 0, 4), SideState(8, 2, 0)))

    def test_highestmodseq_64_bits(self) -> None:
        store = self.open()
        idx = store.add_mailbox(b"INBOX", True)
        big = SideState(1, 1, 2**64 - 2)
        store.init_state(idx, big, SideState(1, 1, 2**63))
        self.assertEqual(store.state(idx), MailboxState(big, SideState(1, 1, 2**63)))
        store.set_state(idx, "remote", highestmodseq=2**63 - 1)
        self.assertEqual(store.state(idx), MailboxState(big, SideState(1, 1, 2**63 - 1)))

    def test_mapping_needs_mailbox(self) -> None:
        store = self.open()
        self.assertRaises(sqlite3.IntegrityError, store.add_mappings, 42, [(1, 1)])
        self.assertRaises(sqlite3.IntegrityError, store.init_state, 42, *[SideState(1, 0, 0)] * 2)


class MappingTests(StoreTestCase):
    def test_map_both_ways(self) -> None:
        store = self.open()
        idx = self.mailbox_with_state(store)
        other = self.mailbox_with_state(store, b"Other")
        store.add_mappings(idx, [(10, 1), (2, 20), (3, 30)])
        store.add_mappings(other, [(10, 100)])
        self.assertEqual(store.mapping(idx), [(2, 20), (3, 30), (10, 1)])
        self.assertEqual(store.map_uids(idx, "local", [10, 3, 3, 99]), {10: 1, 3: 30})
        self.assertEqual(store.map_uids(idx, "remote", iter([1, 20, 10])), {1: 10, 20: 2})
        self.assertEqual(store.map_uids(idx, "local", []), {})
        store.delete_mappings(idx, "remote", [20, 77])
        store.delete_mappings(idx, "local", [10])
        self.assertEqual(store.mapping(idx), [(3, 30)])
        self.assertEqual(store.mapping(other), [(10, 100)])
        self.assertRaises(ValueError, store.map_uids, idx, "left", [1])

    def test_duplicates_refused(self) -> None:
        store = self.open()
        idx = self.mailbox_with_state(store)
        store.add_mappings(idx, [(1, 1)])
        self.assertRaises(sqlite3.IntegrityError, store.add_mappings, idx, [(1, 2)])
        self.assertRaises(sqlite3.IntegrityError, store.add_mappings, idx, [(2, 1)])
        self.assertRaises(sqlite3.IntegrityError, store.add_mappings, idx, [(0, 5)])

    def test_mappings_from(self) -> None:
        """Pairs at or above either UIDNEXT: an interrupted sync."""
        store = self.open()
        idx = self.mailbox_with_state(store)
        store.add_mappings(idx, [(1, 1), (2, 5), (6, 2), (7, 7)])
        self.assertEqual(store.mappings_from(idx, 5, 5), [(2, 5), (6, 2), (7, 7)])
        self.assertEqual(store.mappings_from(idx, 8, 8), [])
        self.assertEqual(store.mappings_from(idx, 1, 1), store.mapping(idx))

    def test_states_and_journaled_of_all_mailboxes(self) -> None:
        store = self.open()
        inbox = self.mailbox_with_state(store)
        work = self.mailbox_with_state(store, b"Work")
        store.add_mailbox(b"New", False)
        with store.transaction():
            store.set_state(work, "remote", uidvalidity=22, uidnext=9, highestmodseq=2**64 - 1)
            store.journal_add(work, "local", [(3, b"d" * 32)])
        self.assertEqual(store.states(), {inbox: store.state(inbox), work: store.state(work)})
        self.assertEqual(store.states()[work].remote, SideState(22, 9, 2**64 - 1))
        self.assertEqual(store.journaled(), {work})

    def test_hundred_thousand(self) -> None:
        """Large mailboxes: a few hundred statements for 100k UIDs, not one per UID."""
        store = self.open()
        idx = self.mailbox_with_state(store)
        pairs = [(uid, 200_001 - uid) for uid in range(1, 100_001)]
        store.add_mappings(idx, pairs)
        statements: list[str] = []
        store._conn.set_trace_callback(statements.append)
        self.addCleanup(store._conn.set_trace_callback, None)
        forward = store.map_uids(idx, "local", range(1, 100_002))
        backward = store.map_uids(idx, "remote", range(1, 200_001))
        listed = store.mapping(idx)
        self.assertLess(len(statements), 500)
        self.assertEqual(forward, dict(pairs))
        self.assertEqual(backward, {r: lu for lu, r in pairs})
        self.assertEqual(listed, pairs)
        store.delete_mappings(idx, "remote", range(100_001, 150_001))
        self.assertEqual(store.mapping(idx), pairs[:50_000])


class TransactionTests(StoreTestCase):
    def test_rollback_on_exception(self) -> None:
        store = self.open()
        idx = self.mailbox_with_state(store)
        with self.assertRaises(ZeroDivisionError):
            with store.transaction():
                store.add_mappings(idx, [(1, 1)])
                store.set_state(idx, "local", uidnext=2)
                store.journal_add(idx, "remote", [(5, b"d")])
                store.add_mailbox(b"New", True)
                1 / 0  # noqa: B018
        self.assertEqual(store.mapping(idx), [])
        self.assertEqual(store.state(idx), MailboxState(SideState(11, 0, 0), SideState(22, 0, 0)))
        self.assertEqual(store.journal(idx, "remote"), {})
        self.assertIsNone(store.mailbox(b"New"))
        # Usable afterwards.
        with store.transaction():
            store.add_mappings(idx, [(1, 1)])
        self.assertEqual(store.mapping(idx), [(1, 1)])

    def test_failed_batch_writes_nothing(self) -> None:
        """Outside transaction() a write is all or nothing."""
        store = self.open()
        idx = self.mailbox_with_state(store)
        store.add_mappings(idx, [(5, 5)])
        self.assertRaises(sqlite3.IntegrityError, store.add_mappings, idx, [(1, 1), (2, 5)])
        self.assertEqual(store.mapping(idx), [(5, 5)])

    def test_crash(self) -> None:
        """A process killed mid-transaction leaves what it committed, and nothing else."""
        store = StateStore.open(self.path)
        idx = self.mailbox_with_state(store)
        store.close()
        env = dict(os.environ, PYTHONPATH=REPOSITORY)
        subprocess.run(
            [sys.executable, "-b", "-c", CHILD_CRASH, self.path, str(idx)],
            cwd=REPOSITORY,
            env=env,
            check=True,
            timeout=60,
        )
        self.assertTrue(os.path.exists(self.path + "-journal"))
        store = self.open()
        self.assertEqual(store.mapping(idx), [(1, 1)])
        self.assertEqual(store.state(idx), MailboxState(SideState(11, 2, 0), SideState(22, 0, 0)))

    def test_failed_write_inside_transaction(self) -> None:
        """A write that fails in a transaction undoes its own rows only, if caught."""
        store = self.open()
        idx = self.mailbox_with_state(store)
        with store.transaction():
            store.add_mappings(idx, [(5, 5)])
            self.assertRaises(sqlite3.IntegrityError, store.add_mappings, idx, [(1, 1), (2, 5)])
            store.add_mappings(idx, [(3, 3)])
        self.assertEqual(store.mapping(idx), [(3, 3), (5, 5)])

    def test_no_nesting(self) -> None:
        store = self.open()
        idx = self.mailbox_with_state(store)
        with self.assertRaises(RuntimeError):
            with store.transaction():
                store.add_mappings(idx, [(1, 1)])
                with store.transaction():
                    pass
        self.assertEqual(store.mapping(idx), [])

    def test_close_rolls_back(self) -> None:
        store = StateStore.open(self.path)
        idx = self.mailbox_with_state(store)
        with self.assertRaises(sqlite3.ProgrammingError):
            with store.transaction():
                store.add_mappings(idx, [(1, 1)])
                store.close()
        self.assertEqual(self.open().mapping(idx), [])


class JournalTests(StoreTestCase):
    def test_round_trip(self) -> None:
        store = self.open()
        idx = self.mailbox_with_state(store)
        one, two = b"\x01" * 32, b"\x02" * 32
        store.journal_add(idx, "remote", [(7, one), (3, two), (5, one)])
        store.journal_add(idx, "local", [(7, two)])
        self.assertEqual(store.journal(idx, "remote"), {one: [5, 7], two: [3]})
        self.assertEqual(store.journal(idx, "local"), {two: [7]})
        # A retried APPEND of the same source UID replaces its entry.
        store.journal_add(idx, "remote", [(3, one)])
        self.assertEqual(store.journal(idx, "remote"), {one: [3, 5, 7]})
        store.journal_remove(idx, "remote", [5, 99])
        self.assertEqual(store.journal(idx, "remote"), {one: [3, 7]})
        store.close()

        store = self.open()
        self.assertEqual(store.journal(idx, "remote"), {one: [3, 7]})
        store.journal_clear(idx, "remote")
        self.assertEqual(store.journal(idx, "remote"), {})
        self.assertEqual(store.journal(idx, "local"), {two: [7]})
        store.journal_clear(idx)
        self.assertEqual(store.journal(idx, "local"), {})
        self.assertRaises(ValueError, store.journal, idx, "database")

    def test_append_commit_point(self) -> None:
        """The mapping and the journal's removal commit together."""
        store = self.open()
        idx = self.mailbox_with_state(store)
        store.journal_add(idx, "remote", [(1, b"a"), (2, b"b")])
        with store.transaction():
            store.add_mappings(idx, [(1, 10), (2, 11)])
            store.journal_remove(idx, "remote", [1, 2])
        self.assertEqual(
            (store.mapping(idx), store.journal(idx, "remote")), ([(1, 10), (2, 11)], {})
        )


# UIDs from a small range, so that batches collide often.
small_uids = st.integers(min_value=1, max_value=12)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.tuples(small_uids, small_uids), max_size=4)),
        st.tuples(st.just("delete"), st.sampled_from(["local", "remote"]), st.lists(small_uids)),
        st.tuples(st.just("map"), st.sampled_from(["local", "remote"]), st.lists(small_uids)),
    ),
    max_size=12,
)


class ModelTests(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.store = self.open()
        self.count = 0

    @settings(max_examples=60, deadline=None)
    @given(operations, st.booleans())
    def test_against_dict(self, ops: list[tuple[object, ...]], in_transaction: bool) -> None:
        """Adds and deletes keep a bijection lUID <-> rUID that map_uids reads back."""
        store = self.store
        self.count += 1
        idx = self.mailbox_with_state(store, b"box%d" % self.count)
        model: Dict[int, int] = {}

        def add(pairs: list[tuple[int, int]]) -> None:
            lefts = [left for left, _ in pairs]
            rights = [right for _, right in pairs]
            valid = (
                len(set(lefts)) == len(lefts)
                and len(set(rights)) == len(rights)
                and not set(lefts) & model.keys()
                and not set(rights) & set(model.values())
            )
            if valid:
                store.add_mappings(idx, pairs)
                model.update(pairs)
            else:
                self.assertRaises(sqlite3.IntegrityError, store.add_mappings, idx, pairs)

        def run() -> None:
            for op in ops:
                if op[0] == "add":
                    add(op[1])  # type: ignore[arg-type]
                elif op[0] == "delete":
                    side, uids = op[1], op[2]
                    store.delete_mappings(idx, side, uids)  # type: ignore[arg-type]
                    for uid in uids:  # type: ignore[attr-defined]
                        for left, right in list(model.items()):
                            if (left if side == "local" else right) == uid:
                                del model[left]
                else:
                    side, uids = op[1], op[2]
                    inverse = {right: left for left, right in model.items()}
                    known = model if side == "local" else inverse
                    self.assertEqual(
                        store.map_uids(idx, side, uids),  # type: ignore[arg-type]
                        {uid: known[uid] for uid in uids if uid in known},  # type: ignore[attr-defined]
                    )

        if in_transaction:
            # A failed batch inside a transaction leaves the others, and none of its rows.
            with store.transaction():
                run()
        else:
            run()
        self.assertEqual(store.mapping(idx), sorted(model.items()))
        everything = range(1, 13)
        self.assertEqual(store.map_uids(idx, "local", everything), model)
        self.assertEqual(
            store.map_uids(idx, "remote", everything), {r: lu for lu, r in model.items()}
        )


class InterimapInteropTests(SynchronousTestCase):
    """The real interimap 0.5.7 and Dovecot on the same database file."""

    def setUp(self) -> None:
        from tests.dovecot import DovecotStore, make_message, require_dovecot

        self.interimap = shutil.which("interimap")
        if self.interimap is None:
            raise SkipTest("interimap is not installed")
        require_dovecot(self)
        self.tmp = tempfile.mkdtemp(prefix="imapsync-state-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.local = DovecotStore(os.path.join(self.tmp, "local"), "/", "local")
        self.remote = DovecotStore(os.path.join(self.tmp, "remote"), ".", "remote")
        self.make_message = make_message
        self.database = os.path.join(self.tmp, "db", "interimap.db")
        self.config = os.path.join(self.tmp, "config")
        with open(self.config, "w") as f:
            f.write(
                f"database = {self.database}\n"
                f"[local]\ntype = tunnel\ncommand = {self.local.tunnel_command}\n"
                f"[remote]\ntype = tunnel\ncommand = {self.remote.tunnel_command}\n"
            )
        os.mkdir(os.path.dirname(self.database), 0o700)

    def run_interimap(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert self.interimap is not None
        return subprocess.run(
            [self.interimap, f"--config={self.config}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def test_interimap_database(self) -> None:
        """interimap's database reads as it synced; ours (with the journal) suits interimap."""
        self.local.create_mailbox("Work/Sub", subscribe=True)
        self.local.append_many("INBOX", [self.make_message(f"m{i}") for i in range(3)])
        self.remote.append("INBOX", self.make_message("r"))
        result = self.run_interimap()
        self.assertEqual(result.returncode, 0, result.stderr)

        store = StateStore.open(self.database)
        names = {m.name: m for m in store.mailboxes()}
        # Work itself is \NonExistent: interimap skips it.
        self.assertEqual(sorted(names), [b"INBOX", b"Work\0Sub"])
        self.assertTrue(names[b"Work\0Sub"].subscribed)
        inbox = names[b"INBOX"].idx
        self.assertEqual(len(store.mapping(inbox)), 4)
        state = store.state(inbox)
        assert state is not None
        self.assertEqual(state.local.uidvalidity, self.local.status("INBOX")["UIDVALIDITY"])
        self.assertEqual(state.remote.uidnext, self.remote.status("INBOX")["UIDNEXT"])
        store.journal_add(names[b"Work\0Sub"].idx, "remote", [(1, b"x" * 32)])

        # Locked out while we hold the database.
        result = self.run_interimap()
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("database is locked", result.stderr)
        store.close()

        # With our journal table in it, interimap carries on.
        self.local.append("INBOX", self.make_message("new"))
        result = self.run_interimap()
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Added 1 UID(s)", result.stderr)
        result = self.run_interimap("--target=database", "--delete", "Work/Sub")
        self.assertEqual(result.returncode, 0, result.stderr)

        store = StateStore.open(self.database)
        self.addCleanup(store.close)
        self.assertEqual(len(store.mapping(inbox)), 5)
        self.assertIsNone(store.mailbox(b"Work\0Sub"))

    def test_our_new_database(self) -> None:
        """A database we created is one interimap syncs into without complaint."""
        StateStore.open(self.database).close()
        self.local.append("INBOX", self.make_message("m"))
        result = self.run_interimap()
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("Creating new schema", result.stderr)
        store = StateStore.open(self.database)
        self.addCleanup(store.close)
        inbox = store.mailbox(b"INBOX")
        assert inbox is not None
        self.assertEqual(len(store.mapping(inbox.idx)), 1)

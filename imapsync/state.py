# -*- test-case-name: tests.test_state -*-
"""The state database: mailboxes, per-side UIDVALIDITY/UIDNEXT/HIGHESTMODSEQ and UID mappings,
in interimap's SQLite schema (version 1), plus a journal of APPENDs in flight.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Literal, Optional

import attrs
from twisted.logger import Logger

__all__ = [
    "DatabaseError",
    "DatabaseLockedError",
    "MailboxExistsError",
    "MailboxRow",
    "MailboxState",
    "SideState",
    "StateStore",
]

log = Logger()

Side = Literal["local", "remote"]

#: The schema version this module writes (``PRAGMA user_version``).
SCHEMA_VERSION = 1

# interimap 0.5.7's version-1 tables, column for column and in its own
# words, so that ``sqlite_master`` reads the same whichever program
# created the file.
_MAILBOXES_COLUMNS = (
    "idx        INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT",
    # The hierarchy delimiter is replaced by \0 (never allowed in a name).
    "mailbox    BLOB COLLATE BINARY NOT NULL CHECK (mailbox != '') UNIQUE",
    "subscribed BOOLEAN NOT NULL",
)
_SIDE_COLUMNS = (
    "idx           INTEGER         NOT NULL PRIMARY KEY REFERENCES mailboxes(idx)",
    "UIDVALIDITY   UNSIGNED INT    NOT NULL CHECK (UIDVALIDITY > 0)",
    "UIDNEXT       UNSIGNED INT    NOT NULL",
    "HIGHESTMODSEQ UNSIGNED BIGINT NOT NULL",
)
_INTERIMAP_TABLES = (
    ("mailboxes", _MAILBOXES_COLUMNS),
    ("local", _SIDE_COLUMNS),
    ("remote", _SIDE_COLUMNS),
    (
        "mapping",
        (
            "idx  INTEGER      NOT NULL REFERENCES mailboxes(idx)",
            "lUID UNSIGNED INT NOT NULL CHECK (lUID > 0)",
            "rUID UNSIGNED INT NOT NULL CHECK (rUID > 0)",
            "PRIMARY KEY (idx,lUID)",
            "UNIQUE      (idx,rUID)",
        ),
    ),
)
# Ours; interimap never lists tables of a version-1 database. ON DELETE
# CASCADE so that interimap's `--delete` (DELETE FROM mailboxes, with
# foreign keys on) is not refused because of rows it does not know about.
_JOURNAL_TABLE = (
    "CREATE TABLE IF NOT EXISTS imapsync_journal ("
    "idx INTEGER NOT NULL REFERENCES mailboxes(idx) ON DELETE CASCADE, "
    "target TEXT NOT NULL CHECK (target IN ('local', 'remote')), "
    "source_uid UNSIGNED INT NOT NULL CHECK (source_uid > 0), "
    "digest BLOB NOT NULL, "
    "PRIMARY KEY (idx, target, source_uid))"
)

# Host parameters per chunked IN (...) query: below SQLite's historical
# limit of 999 whatever the library version.
_CHUNK = 900
_UINT64 = 1 << 64
_INT63 = 1 << 63


def _create_table(name: str, columns: Iterable[str]) -> str:
    # Joined exactly as interimap joins them.
    return f"CREATE TABLE {name} ({', '.join(columns)})"


def _uid_columns(side: str) -> tuple[str, str]:
    """The (this side, other side) UID columns of ``mapping``."""
    if side == "local":
        return "lUID", "rUID"
    if side == "remote":
        return "rUID", "lUID"
    raise ValueError(f"side must be 'local' or 'remote', not {side!r}")


def _side_table(side: str) -> str:
    _uid_columns(side)
    return side


def _encode_modseq(value: int) -> int:
    # interimap stores the unsigned 64-bit HIGHESTMODSEQ as SQLite's signed
    # 8-byte integer (two's complement); so do we, to read each other's.
    return value - _UINT64 if value >= _INT63 else value


def _decode_modseq(value: int) -> int:
    return value % _UINT64


# Consecutive UIDs from this many on are looked up by one range scan.
_RUN = 16


def _runs(values: list[int]) -> Iterator[tuple[int, int]]:
    """(first, last) of each run of consecutive integers in sorted ``values``."""
    if not values:
        return
    first = last = values[0]
    for value in values[1:]:
        if value != last + 1:
            yield first, last
            first = value
        last = value
    yield first, last


def _chunks(values: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


class DatabaseError(Exception):
    """The state database cannot be opened or used (one line naming the file)."""


class DatabaseLockedError(DatabaseError):
    """Another process holds the database's lock."""


class MailboxExistsError(Exception):
    """A mailbox of that name is already in the database."""

    def __init__(self, name: bytes) -> None:
        super().__init__(f"mailbox {name!r} exists in the database")
        self.name = name


@attrs.frozen
class MailboxRow:
    """A row of ``mailboxes``: ``name`` has the hierarchy delimiter replaced by \\0."""

    idx: int
    name: bytes
    subscribed: bool


@attrs.frozen
class SideState:
    """What one side's mailbox looked like when last synced (0 = never)."""

    uidvalidity: int
    uidnext: int
    highestmodseq: int


@attrs.frozen
class MailboxState:
    """Both sides' states of one mailbox."""

    local: SideState
    remote: SideState


@attrs.define
class StateStore:
    """An open, exclusively locked state database.

    Every write method is all or nothing: within the ``transaction()`` in
    progress (as a savepoint), or else in a transaction of its own.
    ``transaction()`` does not nest.
    Errors other than those named here are ``sqlite3.Error``.
    """

    path: str
    _conn: sqlite3.Connection
    _version: int
    _in_transaction: bool = False

    @classmethod
    def open(cls, path: str) -> StateStore:
        """Open (creating it and its directory if missing) and lock ``path``.

        Raises DatabaseLockedError if another process uses the database and
        DatabaseError if it cannot be created, read or written, or was made
        by a newer version. A version-0 interimap database opens, but must
        go through ``migrate_from_v0`` before use.
        """
        absolute = os.path.abspath(path)
        directory = os.path.dirname(absolute)
        if not os.path.isdir(directory):
            try:
                os.makedirs(directory, mode=0o700)
                os.chmod(directory, 0o700)  # whatever the umask
            except FileExistsError:
                pass
            except OSError as e:
                raise DatabaseError(f"cannot create directory {directory}: {e.strerror}") from e
        if not os.access(directory, os.W_OK | os.X_OK):
            # SQLite would only say "unable to open database file".
            raise DatabaseError(
                f"cannot use database {path}: directory {directory} is not writable"
                " (the rollback journal is created there)"
            )
        try:
            fd = os.open(absolute, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            # An existing file keeps its mode, as with interimap; opening it
            # here gives a clearer error than SQLite's.
            try:
                os.close(os.open(absolute, os.O_RDWR | os.O_CLOEXEC))
            except OSError as e:
                raise DatabaseError(f"cannot open database {path}: {e.strerror}") from e
        except OSError as e:
            raise DatabaseError(f"cannot create database {path}: {e.strerror}") from e
        else:
            try:
                os.fchmod(fd, 0o600)  # whatever the umask
            finally:
                os.close(fd)

        # mode=rw: never let SQLite create the file with its default mode.
        uri = pathlib.PurePosixPath(absolute).as_uri() + "?mode=rw"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
        except sqlite3.Error as e:
            raise DatabaseError(f"cannot open database {path}: {e}") from e
        try:
            version = cls._prepare(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, version)

    @staticmethod
    def _prepare(conn: sqlite3.Connection, path: str) -> int:
        """Lock, check and (if empty) create the schema; return its version."""
        try:
            # In EXCLUSIVE locking mode the lock taken by BEGIN EXCLUSIVE is
            # kept after COMMIT, until the connection closes.
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("BEGIN EXCLUSIVE")
            try:
                version = StateStore._check_schema(conn, path)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            # After the first read, when SQLite knows the file's mode.
            (mode,) = conn.execute("PRAGMA journal_mode = DELETE").fetchone()
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise DatabaseLockedError(f"another imapsync is using {path}") from e
            raise DatabaseError(f"cannot use database {path}: {e}") from e
        except sqlite3.Error as e:
            raise DatabaseError(f"cannot use database {path}: {e}") from e
        if mode != "delete":
            raise DatabaseError(f"cannot use database {path}: journal mode stuck at {mode}")
        return version

    @staticmethod
    def _check_schema(conn: sqlite3.Connection, path: str) -> int:
        # The first statement that reads the file: "file is not a database".
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        tables = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        missing = {name for name, _ in _INTERIMAP_TABLES} - tables
        if version > SCHEMA_VERSION:
            raise DatabaseError(
                f"database {path} was created by a newer version (schema version {version})"
            )
        if version == 0 and not tables:
            log.info("Creating new schema in database file {path}", path=path)
            for name, columns in _INTERIMAP_TABLES:
                conn.execute(_create_table(name, columns))
            conn.execute(_JOURNAL_TABLE)
            version = SCHEMA_VERSION
        elif missing:
            raise DatabaseError(
                f"database {path} is not an imapsync or interimap database"
                f" (no table {', '.join(sorted(missing))})"
            )
        elif version == SCHEMA_VERSION:
            conn.execute(_JOURNAL_TABLE)
            StateStore._blob_names(conn, path)
        # Always write: this finds a read-only file or directory now rather
        # than after the first APPEND.
        conn.execute(f"PRAGMA user_version = {version:d}")
        return int(version)

    @staticmethod
    def _blob_names(conn: sqlite3.Connection, path: str) -> None:
        # interimap's flat-namespace (no delimiter) upgrade from version 0
        # keeps names stored as TEXT, which never equal a BLOB parameter.
        try:
            conn.execute(
                "UPDATE mailboxes SET mailbox = CAST(mailbox AS BLOB)"
                " WHERE typeof(mailbox) != 'blob'"
            )
        except sqlite3.IntegrityError as e:
            raise DatabaseError(
                f"database {path} has mailbox names stored both as text and as blob"
            ) from e

    def close(self) -> None:
        """Close the database (rolling back an unfinished transaction) and unlock it."""
        self._conn.close()

    # --- transactions ---------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; ROLLBACK if the block raises.

        Nesting raises RuntimeError: an inner block that failed and was
        caught would otherwise leave half its writes in the outer one.
        """
        if self._in_transaction:
            raise RuntimeError("StateStore.transaction() does not nest")
        self._conn.execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        try:
            yield
            self._check_alive()
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        finally:
            self._in_transaction = False

    def _check_alive(self) -> None:
        # SQLite rolls the whole transaction back on some errors (disk
        # full, I/O error); a caller that caught one must not carry on
        # writing in autocommit mode.
        if not self._conn.in_transaction:
            raise DatabaseError(f"transaction on {self.path} was rolled back by SQLite")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write method's statements, all or nothing even inside transaction()."""
        conn = self._conn
        if not self._in_transaction:
            with self.transaction():
                yield conn
            return
        self._check_alive()
        # A savepoint, so that a batch failing halfway (executemany runs one
        # statement per row) leaves none of its rows in the transaction.
        conn.execute("SAVEPOINT write")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO write")
                conn.execute("RELEASE write")
            raise
        conn.execute("RELEASE write")

    # --- schema version 0 -----------------------------------------------

    def needs_migration(self) -> bool:
        """Whether this is a version-0 interimap database (names with delimiters)."""
        return self._version < SCHEMA_VERSION

    def migrate_from_v0(self, delimiter: Optional[bytes]) -> None:
        """Upgrade a version-0 database as interimap 0.5 does.

        ``delimiter`` is the hierarchy delimiter of both sides (None for a
        flat namespace); the caller refuses to migrate when the two sides'
        delimiters differ, as interimap does.
        """
        if not self.needs_migration():
            raise RuntimeError(f"database {self.path} is already at version {self._version}")
        if self._in_transaction:
            raise RuntimeError("migrate_from_v0() cannot run inside a transaction")
        log.info("Upgrading database version from {version}", version=self._version)
        conn = self._conn
        # The 12-step table rebuild of https://www.sqlite.org/lang_altertable.html:
        # dropping `mailboxes` would otherwise trip the references to it.
        conn.execute("PRAGMA foreign_keys = OFF")
        try:
            with self.transaction():
                conn.execute(_create_table("_tmp1_mailboxes", _MAILBOXES_COLUMNS))
                if delimiter is None:
                    conn.execute(
                        "INSERT INTO _tmp1_mailboxes"
                        " SELECT idx, CAST(mailbox AS BLOB), subscribed FROM mailboxes"
                    )
                else:
                    conn.execute(
                        "INSERT INTO _tmp1_mailboxes SELECT idx,"
                        " CAST(REPLACE(mailbox, ?, x'00') AS BLOB), subscribed FROM mailboxes",
                        (delimiter,),
                    )
                conn.execute("DROP TABLE mailboxes")
                conn.execute("ALTER TABLE _tmp1_mailboxes RENAME TO mailboxes")
                if conn.execute("PRAGMA foreign_key_check").fetchone() is not None:
                    raise DatabaseError(
                        f"database {self.path}: broken referential integrity,"
                        " refusing to upgrade it"
                    )
                conn.execute(_JOURNAL_TABLE)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        finally:
            conn.execute("PRAGMA foreign_keys = ON")
        self._version = SCHEMA_VERSION

    # --- mailboxes --------------------------------------------------------

    def mailboxes(self) -> list[MailboxRow]:
        """All mailboxes, sorted by name (a parent before its children)."""
        rows = self._conn.execute(
            "SELECT idx, CAST(mailbox AS BLOB), subscribed FROM mailboxes ORDER BY mailbox"
        )
        return [MailboxRow(idx, name, bool(subscribed)) for idx, name, subscribed in rows]

    def mailbox(self, name: bytes) -> Optional[MailboxRow]:
        row = self._conn.execute(
            "SELECT idx, subscribed FROM mailboxes WHERE mailbox = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        return MailboxRow(row[0], name, bool(row[1]))

    def add_mailbox(self, name: bytes, subscribed: bool) -> int:
        """Insert a mailbox and return its idx; MailboxExistsError if known."""
        if not name:
            # interimap's CHECK (mailbox != '') compares with TEXT: any BLOB passes.
            raise ValueError("empty mailbox name")
        with self._write() as conn:
            if self.mailbox(name) is not None:
                raise MailboxExistsError(name)
            cursor = conn.execute(
                "INSERT INTO mailboxes (mailbox, subscribed) VALUES (?, ?)",
                (name, int(subscribed)),
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def set_subscribed(self, idx: int, subscribed: bool) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE mailboxes SET subscribed = ? WHERE idx = ?", (int(subscribed), idx)
            )

    def rename_mailbox(self, old: bytes, new: bytes) -> int:
        """Rename ``old`` and its children (``old\\0...``); return how many rows moved.

        ``old`` itself need not be in the database (only children). Raises
        MailboxExistsError if any target name is taken, ValueError if one
        name is the other or an ancestor of it.
        """
        if old == new or new.startswith(old + b"\0") or old.startswith(new + b"\0"):
            raise ValueError(f"cannot rename {old!r} to {new!r}")
        prefix = old + b"\0"
        with self._write() as conn:
            # The table is small (one row per mailbox): check in Python.
            rows = list(conn.execute("SELECT idx, CAST(mailbox AS BLOB) FROM mailboxes"))
            names = {name for _, name in rows}
            renames = [
                (new + name[len(old) :], idx)
                for idx, name in rows
                if name == old or name.startswith(prefix)
            ]
            # With neither name below the other, no target is a renamed row.
            for target, _ in renames:
                if target in names:
                    raise MailboxExistsError(target)
            conn.executemany("UPDATE mailboxes SET mailbox = ? WHERE idx = ?", renames)
        return len(renames)

    def delete_mailbox(self, idx: int) -> None:
        """Forget a mailbox: its row, states, mappings and journal (not its children)."""
        with self._write() as conn:
            # Referencing tables first, for the foreign keys.
            for table in ("imapsync_journal", "mapping", "local", "remote", "mailboxes"):
                conn.execute(f"DELETE FROM {table} WHERE idx = ?", (idx,))

    # --- UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ -----------------------------

    def state(self, idx: int) -> Optional[MailboxState]:
        return self._states(" WHERE l.idx = ?", (idx,)).get(idx)

    def states(self) -> dict[int, MailboxState]:
        """`state` of every mailbox that has one, in one query."""
        return self._states("", ())

    def _states(self, where: str, args: tuple[int, ...]) -> dict[int, MailboxState]:
        rows = self._conn.execute(
            "SELECT l.idx, l.UIDVALIDITY, l.UIDNEXT, l.HIGHESTMODSEQ,"
            " r.UIDVALIDITY, r.UIDNEXT, r.HIGHESTMODSEQ"
            " FROM local l JOIN remote r ON l.idx = r.idx" + where,
            args,
        )
        return {
            row[0]: MailboxState(
                SideState(row[1], row[2], _decode_modseq(row[3])),
                SideState(row[4], row[5], _decode_modseq(row[6])),
            )
            for row in rows
        }

    def init_state(self, idx: int, local: SideState, remote: SideState) -> None:
        """Insert both sides' rows at once (interimap: UIDNEXT and HIGHESTMODSEQ 0)."""
        with self._write() as conn:
            for table, side in (("local", local), ("remote", remote)):
                conn.execute(
                    f"INSERT INTO {table} (idx, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ)"
                    " VALUES (?, ?, ?, ?)",
                    (idx, side.uidvalidity, side.uidnext, _encode_modseq(side.highestmodseq)),
                )

    def set_state(
        self,
        idx: int,
        side: Side,
        uidvalidity: Optional[int] = None,
        uidnext: Optional[int] = None,
        highestmodseq: Optional[int] = None,
    ) -> None:
        """Update the given fields of one side's row, inserting it if missing.

        Inserting needs ``uidvalidity`` (the others default to 0). Rows
        come in local/remote pairs: insert the other side's in the same
        transaction, or use ``init_state``.
        """
        table = _side_table(side)
        fields = {
            "UIDVALIDITY": uidvalidity,
            "UIDNEXT": uidnext,
            "HIGHESTMODSEQ": None if highestmodseq is None else _encode_modseq(highestmodseq),
        }
        given = {column: value for column, value in fields.items() if value is not None}
        if not given:
            return
        with self._write() as conn:
            assignments = ", ".join(f"{column} = ?" for column in given)
            cursor = conn.execute(
                f"UPDATE {table} SET {assignments} WHERE idx = ?", (*given.values(), idx)
            )
            if cursor.rowcount == 0:
                if uidvalidity is None:
                    raise ValueError(f"no {side} state for mailbox {idx}: UIDVALIDITY needed")
                conn.execute(
                    f"INSERT INTO {table} (idx, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ)"
                    " VALUES (?, ?, ?, ?)",
                    (idx, uidvalidity, uidnext or 0, fields["HIGHESTMODSEQ"] or 0),
                )

    # --- UID mappings -----------------------------------------------------

    def mapping(self, idx: int) -> list[tuple[int, int]]:
        """All (lUID, rUID) pairs of a mailbox, by lUID."""
        return self._conn.execute(
            "SELECT lUID, rUID FROM mapping WHERE idx = ? ORDER BY lUID", (idx,)
        ).fetchall()

    def map_uids(self, idx: int, side: Side, uids: Iterable[int]) -> dict[int, int]:
        """``side``'s UIDs -> the other side's, for those that are mapped."""
        this, other = _uid_columns(side)
        result: dict[int, int] = {}
        singles: list[int] = []
        # Runs of consecutive UIDs (most sets are few long ranges) are read
        # with one range scan each; the rest, with IN lists.
        for first, last in _runs(sorted(set(uids))):
            if last - first < _RUN:
                singles.extend(range(first, last + 1))
                continue
            result.update(
                self._conn.execute(
                    f"SELECT {this}, {other} FROM mapping"
                    f" WHERE idx = ? AND {this} BETWEEN ? AND ?",
                    (idx, first, last),
                )
            )
        for chunk in _chunks(singles):
            placeholders = ", ".join("?" * len(chunk))
            result.update(
                self._conn.execute(
                    f"SELECT {this}, {other} FROM mapping"
                    f" WHERE idx = ? AND {this} IN ({placeholders})",
                    (idx, *chunk),
                )
            )
        return result

    def add_mappings(self, idx: int, pairs: Iterable[tuple[int, int]]) -> None:
        """Insert (lUID, rUID) pairs; a pair reusing a UID raises sqlite3.IntegrityError."""
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO mapping (idx, lUID, rUID) VALUES (?, ?, ?)",
                ((idx, luid, ruid) for luid, ruid in pairs),
            )

    def delete_mappings(self, idx: int, side: Side, uids: Iterable[int]) -> None:
        """Delete the pairs whose ``side`` UID is in ``uids``."""
        this, _ = _uid_columns(side)
        with self._write() as conn:
            conn.executemany(
                f"DELETE FROM mapping WHERE idx = ? AND {this} = ?", ((idx, uid) for uid in uids)
            )

    def mappings_from(self, idx: int, luid_min: int, ruid_min: int) -> list[tuple[int, int]]:
        """Pairs with lUID >= luid_min or rUID >= ruid_min, by lUID.

        With the stored UIDNEXTs, these mark an interrupted sync.
        """
        return self._conn.execute(
            "SELECT lUID, rUID FROM mapping WHERE idx = ? AND (lUID >= ? OR rUID >= ?)"
            " ORDER BY lUID",
            (idx, luid_min, ruid_min),
        ).fetchall()

    # --- journal of APPENDs in flight -------------------------------------

    def journal_add(self, idx: int, target: Side, entries: Iterable[tuple[int, bytes]]) -> None:
        """Record (source UID, sha256 of the body) of messages about to be appended to ``target``.

        Re-adding a source UID replaces its digest.
        """
        _side_table(target)
        with self._write() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO imapsync_journal (idx, target, source_uid, digest)"
                " VALUES (?, ?, ?, ?)",
                ((idx, target, uid, digest) for uid, digest in entries),
            )

    def journal(self, idx: int, target: Side) -> dict[bytes, list[int]]:
        """Digest -> source UIDs (ascending) of the APPENDs to ``target`` in flight."""
        _side_table(target)
        result: dict[bytes, list[int]] = {}
        rows = self._conn.execute(
            "SELECT digest, source_uid FROM imapsync_journal"
            " WHERE idx = ? AND target = ? ORDER BY source_uid",
            (idx, target),
        )
        for digest, uid in rows:
            result.setdefault(digest, []).append(uid)
        return result

    def journaled(self) -> set[int]:
        """The mailboxes with APPENDs in flight (to either side)."""
        return {idx for (idx,) in self._conn.execute("SELECT DISTINCT idx FROM imapsync_journal")}

    def journal_remove(self, idx: int, target: Side, source_uids: Iterable[int]) -> None:
        _side_table(target)
        with self._write() as conn:
            conn.executemany(
                "DELETE FROM imapsync_journal WHERE idx = ? AND target = ? AND source_uid = ?",
                ((idx, target, uid) for uid in source_uids),
            )

    def journal_clear(self, idx: int, target: Optional[Side] = None) -> None:
        """Forget a mailbox's journal, for one target or both."""
        with self._write() as conn:
            if target is None:
                conn.execute("DELETE FROM imapsync_journal WHERE idx = ?", (idx,))
            else:
                _side_table(target)
                conn.execute(
                    "DELETE FROM imapsync_journal WHERE idx = ? AND target = ?", (idx, target)
                )

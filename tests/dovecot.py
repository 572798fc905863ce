# -*- test-case-name: tests.test_dovecot_harness -*-
"""Real Dovecot 2.3 servers for tests: tunnel stores and a network daemon.

Test tooling, not product code: blocking calls, its own small IMAP client,
so that what the tests check does not depend on our client. Run as a
script, this file is the capability-stripping tunnel filter.
"""

from __future__ import annotations

import base64
import ctypes
import datetime
import grp
import hashlib
import os
import pwd
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union
from unittest import SkipTest

import attrs

__all__ = [
    "CommandResult",
    "DovecotDaemon",
    "DovecotError",
    "DovecotPaths",
    "DovecotStore",
    "IMAPCommandError",
    "IMAPConnection",
    "Literal",
    "MailStore",
    "MailboxInfo",
    "MessageInfo",
    "StatusResponse",
    "find_dovecot",
    "make_message",
    "require_dovecot",
]

MailboxName = Union[str, bytes]
Flags = Iterable[str]
InternalDate = Union[datetime.datetime, str, None]
#: What ``append_many`` takes: a message, or (message, flags, internaldate).
AppendItem = Union[bytes, tuple[bytes, Flags, InternalDate]]
#: ``snapshot()``: mailbox path -> sorted (sha256, flags[, internaldate]).
Snapshot = dict[tuple[str, ...], list[tuple[Any, ...]]]

_LIBEXEC_CANDIDATES = (
    "/usr/lib/dovecot",
    "/usr/libexec/dovecot",
    "/usr/local/libexec/dovecot",
    "/usr/local/lib/dovecot",
)
# A user for mail access when we are root (Dovecot refuses root), created
# only where the system has no nobody/nogroup.
_FALLBACK_USER = "imapsync-test"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_BATCH_BYTES = 1 << 20
_BATCH_MESSAGES = 200


class DovecotError(Exception):
    """Dovecot could not be set up, started or talked to."""


# --- locating Dovecot ------------------------------------------------------


@attrs.frozen
class DovecotPaths:
    """The programs the harness runs."""

    dovecot: str
    doveconf: str
    #: The imap binary, run directly: ``doveadm exec imap`` would apply
    #: doveadm's settings and ignore ``protocol imap {}`` (imap_zlib,
    #: imap_capability).
    imap: str
    #: Needed only as root, to drop to the mail user.
    setpriv: Optional[str]
    version: str


def find_dovecot() -> Optional[DovecotPaths]:
    """Locate a usable Dovecot 2.3 installation, or return None."""
    return _find_dovecot()[0]


def _find_dovecot() -> tuple[Optional[DovecotPaths], str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    dovecot = shutil.which("dovecot", path=search)
    doveconf = shutil.which("doveconf", path=search)
    if dovecot is None or doveconf is None:
        return None, "dovecot/doveconf not found (Debian: apt install dovecot-imapd)"
    imap = None
    for libexec in _LIBEXEC_CANDIDATES:
        candidate = os.path.join(libexec, "imap")
        if os.access(candidate, os.X_OK):
            imap = candidate
            break
    if imap is None:
        return None, "Dovecot's imap binary not found (is dovecot-imapd installed?)"
    setpriv = shutil.which("setpriv", path=search)
    if os.geteuid() == 0:
        if setpriv is None:
            return None, "running as root needs setpriv (util-linux) to drop privileges"
        for user in ("dovecot", "dovenull"):  # the daemon's internal and login users
            try:
                pwd.getpwnam(user)
            except KeyError:
                return None, f"no {user!r} user (the dovecot-core package creates it)"
    try:
        version = (
            subprocess.run([dovecot, "--version"], capture_output=True, timeout=10, check=True)
            .stdout.decode("ascii", "replace")
            .strip()
        )
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{dovecot} --version failed: {e}"
    if not version.startswith("2.3."):
        return None, f"Dovecot 2.3 wanted, found {version}"
    return DovecotPaths(dovecot, doveconf, imap, setpriv, version), ""


def _dovecot_required() -> bool:
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or (
        os.environ.get("IMAPSYNC_REQUIRE_DOVECOT") == "1"
    )


def require_dovecot(testcase: unittest.TestCase) -> DovecotPaths:
    """Return Dovecot's paths; skip the test if it is missing.

    Under CI (``CI`` set) or ``IMAPSYNC_REQUIRE_DOVECOT=1`` a missing
    Dovecot fails the test instead: a tier whose server is missing must not
    pass silently.
    """
    paths, reason = _find_dovecot()
    if paths is not None:
        return paths
    message = f"Dovecot tier unavailable: {reason}"
    if _dovecot_required():
        testcase.fail(message + " (required: CI or IMAPSYNC_REQUIRE_DOVECOT=1 is set)")
    raise SkipTest(message)


def _required_paths(paths: Optional[DovecotPaths]) -> DovecotPaths:
    if paths is not None:
        return paths
    found, reason = _find_dovecot()
    if found is None:
        raise DovecotError(reason)
    return found


# --- the unprivileged mail user ----------------------------------------------


@attrs.frozen
class _MailUser:
    name: str
    uid: int
    gid: int


def _mail_user() -> Optional[_MailUser]:
    """The user mail is accessed as when we are root; None when we are not."""
    if os.geteuid() != 0:
        return None
    try:
        nobody = pwd.getpwnam("nobody")
        nogroup = grp.getgrnam("nogroup")
        return _MailUser("nobody", nobody.pw_uid, nogroup.gr_gid)
    except KeyError:
        pass
    try:
        entry = pwd.getpwnam(_FALLBACK_USER)
    except KeyError:
        # useradd exits 9 when another process created the user meanwhile.
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                _FALLBACK_USER,
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        entry = pwd.getpwnam(_FALLBACK_USER)
    return _MailUser(_FALLBACK_USER, entry.pw_uid, entry.pw_gid)


def _make_traversable(directory: Path) -> None:
    """Let the mail user reach ``directory``: add o+x where root blocks it."""
    for path in (directory, *directory.parents):
        st = path.stat()
        if st.st_uid == 0 and not st.st_mode & 0o001:
            os.chmod(path, (st.st_mode & 0o7777) | 0o001)


def _chown_tree(root: Path, user: Optional[_MailUser]) -> None:
    if user is None:
        return
    os.chown(root, user.uid, user.gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), user.uid, user.gid)


def _check_config_path(path: Path) -> None:
    # Dovecot's config syntax and mail_location have no quoting we rely on.
    if re.search(r'[\s":#\\]', str(path)):
        raise DovecotError(f"unusable path for a Dovecot config (whitespace or quotes): {path}")


def _mail_location(mail_format: str, separator: str) -> str:
    # sdbox is the default: as fast as maildir here, and its fs layout
    # reserves no names (maildir's LAYOUT=fs refuses "new", "cur", "tmp").
    if mail_format == "maildir":
        # Maildir++ itself uses "."; other separators need the fs layout.
        return "maildir:~/mail" if separator == "." else "maildir:~/mail:LAYOUT=fs"
    if mail_format in ("sdbox", "mdbox"):
        return f"{mail_format}:~/mail"
    raise ValueError(f"unsupported mail_format {mail_format!r}")


def _mail_settings(mail_format: str, separator: str, user: Optional[_MailUser], extra: str) -> str:
    if len(separator) != 1 or separator in '"\\ \r\n':
        raise ValueError(f"unusable hierarchy separator {separator!r}")
    # As root, mail is accessed as an unprivileged user (Dovecot refuses root).
    mail_ids = [f"mail_uid = {user.uid}", f"mail_gid = {user.gid}"] if user is not None else []
    lines = [
        f"mail_location = {_mail_location(mail_format, separator)}",
        *mail_ids,
        # NOTIFY is only advertised with the list index.
        "mailbox_list_index = yes",
        # Test data is disposable; fsync per message makes seeding slow.
        "mail_fsync = never",
        "protocol imap {",
        "  mail_plugins = $mail_plugins imap_zlib",
        "}",
        "namespace inbox {",
        f"  separator = {separator}",
        "  inbox = yes",
        "}",
        extra,
    ]
    return "\n".join(lines) + "\n"


def _write_tunnel_script(
    path: Path,
    paths: DovecotPaths,
    config: Path,
    username: str,
    home: Path,
    log: Path,
    user: Optional[_MailUser],
) -> None:
    # A standalone imap logs to stderr whatever log_path says, hence the
    # redirection. USER must be set ("Fatal: USER environment missing"),
    # HOME expands "~" in mail_location.
    command = [
        shutil.which("env") or "/usr/bin/env",
        f"USER={username}",
        f"HOME={home}",
        paths.imap,
        "-c",
        str(config),
    ]
    if user is not None:
        assert paths.setpriv is not None
        command[:0] = [
            paths.setpriv,
            f"--reuid={user.uid}",
            f"--regid={user.gid}",
            "--clear-groups",
        ]
    path.write_text(f"#!/bin/sh\nexec 2>>{shlex.quote(str(log))}\nexec {shlex.join(command)}\n")
    os.chmod(path, 0o755)


# --- a small synchronous IMAP client -----------------------------------------


@attrs.frozen
class Literal:
    """A command argument sent as a literal (LITERAL+ when offered)."""

    data: bytes


@attrs.frozen
class StatusResponse:
    """A tagged or untagged OK/NO/BAD/BYE/PREAUTH response."""

    tag: bytes
    status: bytes
    #: The response code, tokenized (e.g. [b"APPENDUID", b"1", b"1:3"]), or None.
    code: Optional[list[Any]]
    text: bytes


@attrs.frozen
class CommandResult:
    status: StatusResponse
    #: Untagged responses: token lists (``[b"3", b"EXISTS"]``) or StatusResponse.
    untagged: list[Any]

    def data(self, kind: bytes) -> list[list[Any]]:
        """Untagged data responses of one kind (LIST, FETCH, EXISTS, ...)."""
        kind = kind.upper()
        found = []
        for response in self.untagged:
            if isinstance(response, StatusResponse) or not response:
                continue
            if _upper(response[0]) == kind or (
                len(response) > 1 and response[0].isdigit() and _upper(response[1]) == kind
            ):
                found.append(response)
        return found

    def codes(self, name: bytes) -> list[list[Any]]:
        """Response codes of one name, from untagged and tagged status lines."""
        name = name.upper()
        return [
            response.code
            for response in [*self.untagged, self.status]
            if isinstance(response, StatusResponse)
            and response.code
            and _upper(response.code[0]) == name
        ]


class IMAPCommandError(DovecotError):
    def __init__(self, command: bytes, response: StatusResponse) -> None:
        super().__init__(
            f"{command.decode('ascii', 'replace')}: {response.status.decode()} "
            f"{response.text.decode('utf-8', 'replace')}"
        )
        self.response = response


def _upper(token: Any) -> Any:
    return token.upper() if isinstance(token, bytes) else token


_STATUS_RE = re.compile(
    rb"(\S+) (OK|NO|BAD|BYE|PREAUTH)(?: \[([^\]]*)\])? ?(.*?)\r\n\Z", re.I | re.S
)
_LITERAL_RE = re.compile(rb"~?\{(\d+)\+?\}\r\n")
_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}\r\n\Z")


def _tokenize(data: bytes) -> list[Any]:
    """Parse IMAP data (literals inline) into nested lists of bytes/None."""
    tokens, pos = _parse_list(data, 0, False)
    return tokens


def _parse_list(data: bytes, pos: int, nested: bool) -> tuple[list[Any], int]:
    out: list[Any] = []
    end = len(data)
    while pos < end:
        c = data[pos]
        if c in b" \r\n":
            pos += 1
        elif c == 0x28:  # (
            sub, pos = _parse_list(data, pos + 1, True)
            out.append(sub)
        elif c == 0x29:  # )
            if not nested:
                raise DovecotError(f"unbalanced ')' in {data[:200]!r}")
            return out, pos + 1
        elif c == 0x22:  # "
            chunk = bytearray()
            pos += 1
            while data[pos] != 0x22:
                if data[pos] == 0x5C:  # backslash
                    pos += 1
                chunk.append(data[pos])
                pos += 1
            out.append(bytes(chunk))
            pos += 1
        elif (c == 0x7B or c == 0x7E) and (m := _LITERAL_RE.match(data, pos)):
            start = m.end()
            out.append(data[start : start + int(m.group(1))])
            pos = start + int(m.group(1))
        else:
            start, depth = pos, 0
            while pos < end:
                ch = data[pos]
                if ch == 0x5B:
                    depth += 1
                elif ch == 0x5D:
                    depth -= 1
                elif depth <= 0 and ch in b" ()\r\n":
                    break
                pos += 1
            atom = data[start:pos]
            out.append(None if atom.upper() == b"NIL" else atom)
    if nested:
        raise DovecotError(f"unterminated list in {data[:200]!r}")
    return out, pos


def _parse_response(raw: bytes) -> Any:
    first_line = raw[: raw.find(b"\n") + 1]
    m = _STATUS_RE.match(first_line)
    if m and first_line == raw:
        code = _tokenize(m.group(3)) if m.group(3) is not None else None
        return StatusResponse(m.group(1), m.group(2).upper(), code, m.group(4))
    if raw.startswith(b"* "):
        return _tokenize(raw[2:])
    return raw


class IMAPConnection:
    """A blocking IMAP session over a tunnel command's stdin/stdout.

    Every wait for the server is bounded by ``timeout`` seconds of silence.
    Use as a context manager, or call ``close()``: it logs out and reaps the
    process.
    """

    def __init__(self, argv: Sequence[str], *, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._buffer = bytearray()
        self._tag = 0
        self._proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._in = self._proc.stdin.fileno()
        self._out = self._proc.stdout.fileno()
        os.set_blocking(self._in, False)
        try:
            greeting = _parse_response(self._read_response())
            if not isinstance(greeting, StatusResponse) or greeting.status not in (
                b"OK",
                b"PREAUTH",
            ):
                raise DovecotError(f"unexpected greeting {greeting!r}")
            self.greeting = greeting
            if greeting.code and _upper(greeting.code[0]) == b"CAPABILITY":
                self.capabilities = frozenset(_upper(c) for c in greeting.code[1:])
            else:
                self.refresh_capabilities()
        except BaseException:
            self._reap()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    def __enter__(self) -> IMAPConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _fill(self) -> None:
        if not select.select([self._out], [], [], self.timeout)[0]:
            raise DovecotError(f"IMAP server silent for {self.timeout} s")
        data = os.read(self._out, 1 << 18)
        if not data:
            raise DovecotError("IMAP tunnel closed the connection (see the store's imap.log)")
        self._buffer += data

    def _readline(self) -> bytes:
        start = 0
        while (end := self._buffer.find(b"\n", start)) < 0:
            start = len(self._buffer)
            self._fill()
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        return line

    def _read_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _read_response(self) -> bytes:
        parts = []
        while True:
            line = self._readline()
            parts.append(line)
            m = _LITERAL_AT_END.search(line)
            if m is None:
                return b"".join(parts)
            parts.append(self._read_exact(int(m.group(1))))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if not select.select([], [self._in], [], self.timeout)[1]:
                raise DovecotError(f"IMAP server not reading for {self.timeout} s")
            try:
                view = view[os.write(self._in, view) :]
            except BlockingIOError:
                continue

    def command(self, *args: Union[bytes, Literal]) -> CommandResult:
        """Send one command, return its responses; raise IMAPCommandError on NO/BAD."""
        self._tag += 1
        tag = b"H%d" % self._tag
        untagged: list[Any] = []
        literal_plus = b"LITERAL+" in self.capabilities
        pending = bytearray(tag)
        for arg in args:
            pending += b" "
            if isinstance(arg, Literal):
                if literal_plus:
                    pending += b"{%d+}\r\n" % len(arg.data)
                else:
                    pending += b"{%d}\r\n" % len(arg.data)
                    self._write(bytes(pending))
                    pending.clear()
                    self._await_continuation(tag, untagged)
                pending += arg.data
            else:
                pending += arg
        pending += b"\r\n"
        self._write(bytes(pending))
        name = b" ".join(a for a in args[:2] if isinstance(a, bytes))
        while True:
            response = _parse_response(self._read_response())
            if isinstance(response, StatusResponse) and response.tag == tag:
                if response.status != b"OK":
                    raise IMAPCommandError(name, response)
                return CommandResult(response, untagged)
            if isinstance(response, bytes):
                raise DovecotError(f"unexpected response {response[:200]!r}")
            untagged.append(response)

    def _await_continuation(self, tag: bytes, untagged: list[Any]) -> None:
        while True:
            raw = self._read_response()
            if raw.startswith(b"+"):
                return
            response = _parse_response(raw)
            if isinstance(response, StatusResponse) and response.tag == tag:
                raise IMAPCommandError(tag, response)
            untagged.append(response)

    def refresh_capabilities(self) -> frozenset[bytes]:
        result = self.command(b"CAPABILITY")
        self.capabilities = frozenset(_upper(c) for c in result.data(b"CAPABILITY")[0][1:])
        return self.capabilities

    def select(self, mailbox: MailboxName, *, readonly: bool = False) -> dict[str, int]:
        """SELECT (or EXAMINE); return EXISTS, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ."""
        result = self.command(b"EXAMINE" if readonly else b"SELECT", _astring(mailbox))
        info = {"EXISTS": int(result.data(b"EXISTS")[0][0])}
        for name in (b"UIDVALIDITY", b"UIDNEXT", b"HIGHESTMODSEQ"):
            for code in result.codes(name):
                info[name.decode()] = int(code[1])
        return info

    def close(self) -> None:
        """LOGOUT (best effort), then reap the tunnel process."""
        if self._proc.poll() is None:
            try:
                self.timeout = min(self.timeout, 5.0)
                self.command(b"LOGOUT")
            except (DovecotError, OSError):
                pass
        self._reap()

    def _reap(self) -> None:
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()
        _stop_process(self._proc, grace=5.0)


def _stop_process(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Wait for ``proc``; TERM it after ``grace`` s, KILL it after as long again."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and proc.poll() is None:
            os.kill(proc.pid, sig)
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue
    raise DovecotError(f"process {proc.pid} survived SIGKILL")


# --- encoding helpers ----------------------------------------------------------


def _mutf7_encode(name: str) -> bytes:
    out = bytearray()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            encoded = base64.b64encode("".join(pending).encode("utf-16-be"))
            out.extend(b"&" + encoded.rstrip(b"=").replace(b"/", b",") + b"-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.extend(b"&-" if ch == "&" else ch.encode("ascii"))
        else:
            pending.append(ch)
    flush()
    return bytes(out)


def _mutf7_decode(raw: bytes) -> str:
    def decode(m: re.Match[bytes]) -> bytes:
        if not m.group(1):
            return b"&"
        chunk = m.group(1).replace(b",", b"/")
        chunk += b"=" * (-len(chunk) % 4)
        return base64.b64decode(chunk).decode("utf-16-be").encode("utf-8")

    return re.sub(rb"&([^-]*)-", decode, raw).decode("utf-8")


def _mailbox_bytes(name: MailboxName) -> bytes:
    return name if isinstance(name, bytes) else _mutf7_encode(name)


def _astring(name: MailboxName) -> Union[bytes, Literal]:
    raw = _mailbox_bytes(name)
    if re.search(rb"[\x00\r\n\x80-\xff]", raw):
        return Literal(raw)
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _flag_list(flags: Flags) -> bytes:
    if isinstance(flags, str):
        raise TypeError(f"flags must be a sequence of flags, not the string {flags!r}")
    return b"(" + b" ".join(f.encode("ascii") for f in flags) + b")"


def _format_internaldate(date: InternalDate) -> bytes:
    if isinstance(date, str):
        return b'"' + date.encode("ascii") + b'"'
    assert date is not None
    if date.tzinfo is None:
        date = date.replace(tzinfo=datetime.UTC)
    offset = date.utcoffset() or datetime.timedelta()
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    text = (
        f"{date.day:02d}-{_MONTHS[date.month - 1]}-{date.year:04d} "
        f"{date.hour:02d}:{date.minute:02d}:{date.second:02d} "
        f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    )
    return b'"' + text.encode("ascii") + b'"'


def _parse_internaldate(raw: bytes) -> datetime.datetime:
    m = re.fullmatch(rb" ?(\d{1,2})-(\w{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([-+])(\d\d)(\d\d)", raw)
    if m is None:
        raise DovecotError(f"bad INTERNALDATE {raw!r}")
    offset = datetime.timedelta(hours=int(m.group(8)), minutes=int(m.group(9)))
    tz = datetime.timezone(-offset if m.group(7) == b"-" else offset)
    return datetime.datetime(
        int(m.group(3)),
        _MONTHS.index(m.group(2).decode().title()) + 1,
        int(m.group(1)),
        int(m.group(4)),
        int(m.group(5)),
        int(m.group(6)),
        tzinfo=tz,
    )


def _uid_set(uids: Union[int, Iterable[int]]) -> bytes:
    values = sorted({uids} if isinstance(uids, int) else set(uids))
    if not values:
        raise ValueError("empty UID set")
    ranges: list[list[int]] = []
    for uid in values:
        if ranges and uid == ranges[-1][1] + 1:
            ranges[-1][1] = uid
        else:
            ranges.append([uid, uid])
    return b",".join(b"%d" % a if a == b else b"%d:%d" % (a, b) for a, b in ranges)


def _parse_uid_set(raw: bytes) -> list[int]:
    uids: list[int] = []
    for part in raw.split(b","):
        first, _, last = part.partition(b":")
        uids.extend(range(int(first), int(last or first) + 1))
    return uids


def make_message(
    subject: str,
    body: str = "",
    *,
    sender: str = "Alice <alice@example.org>",
    to: str = "Bob <bob@example.org>",
    date: str = "Thu, 13 Feb 2025 10:00:00 +0000",
    message_id: Optional[str] = None,
    size: int = 0,
) -> bytes:
    """An RFC 5322 message with CRLF line ends, padded to about ``size`` bytes.

    Dovecot returns bodies with CRLF: seed with CRLF so hashes round-trip.
    """
    digest = hashlib.sha256(f"{subject}\0{body}".encode()).hexdigest()[:24]
    headers = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n"
        f"Message-ID: {message_id or f'<{digest}@example.org>'}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    text = body.replace("\r\n", "\n").replace("\n", "\r\n").encode() + b"\r\n"
    missing = size - len(headers) - len(text)
    if missing > 0:
        line = b"x" * 76 + b"\r\n"
        text += line * (missing // len(line) + 1)
    return headers + text


# --- store helpers -------------------------------------------------------------


@attrs.frozen
class MailboxInfo:
    name: str
    #: The name as on the wire (modified UTF-7).
    raw: bytes
    separator: Optional[str]
    attributes: frozenset[str]
    subscribed: bool

    @property
    def path(self) -> tuple[str, ...]:
        """The name split on its separator: comparable across stores."""
        return tuple(self.name.split(self.separator)) if self.separator else (self.name,)

    @property
    def selectable(self) -> bool:
        return not {"\\noselect", "\\nonexistent"} & {a.lower() for a in self.attributes}


@attrs.frozen
class MessageInfo:
    uid: int
    flags: frozenset[str]
    internaldate: datetime.datetime
    sha256: str
    size: int
    modseq: int


class MailStore:
    """Manipulate and inspect one Dovecot mail account through its own tunnel.

    Each call opens a session (about 20 ms) and closes it; use ``session()``
    to do several things in one. Mailbox names are ``str`` (encoded to
    modified UTF-7) or wire ``bytes``, written with this store's separator.
    """

    def __init__(
        self, tunnel_argv: Sequence[str], separator: str, log_path: Path, timeout: float = 30.0
    ) -> None:
        #: The tunnel as an argv (run it with pipes, not a socket).
        self.tunnel_argv = list(tunnel_argv)
        self.separator = separator
        #: Where the tunnel's imap logs (a standalone imap logs to stderr).
        self.log_path = log_path
        #: Seconds of server silence before a helper gives up.
        self.timeout = timeout

    @property
    def tunnel_command(self) -> str:
        """The tunnel as a ``command=`` value for a type=tunnel config."""
        return shlex.join(self.tunnel_argv)

    def tunnel_argv_without(self, capabilities: Iterable[str]) -> list[str]:
        """The tunnel behind a filter that hides ``capabilities``."""
        caps = [c.upper() for c in capabilities]
        if not caps or not all(re.fullmatch(r"[A-Z0-9][A-Z0-9=+._-]*", c) for c in caps):
            raise ValueError(f"bad capability list {caps!r}")
        return [
            sys.executable,
            "-P",  # not tests/ on sys.path: nothing there may shadow the stdlib
            os.path.abspath(__file__),
            "strip-capabilities",
            ",".join(caps),
            "--",
            *self.tunnel_argv,
        ]

    def tunnel_command_without(self, capabilities: Iterable[str]) -> str:
        """``tunnel_command`` whose server does not advertise ``capabilities``.

        CAPABILITY responses and [CAPABILITY] codes lose them; the server
        still implements them, so this tests what a client decides from
        the advertisement. Works across COMPRESS=DEFLATE.
        """
        return shlex.join(self.tunnel_argv_without(capabilities))

    def session(self) -> IMAPConnection:
        """A fresh IMAP session (a context manager)."""
        return IMAPConnection(self.tunnel_argv, timeout=self.timeout)

    def mailbox_name(self, *parts: str) -> str:
        """Join hierarchy levels with this store's separator."""
        return self.separator.join(parts)

    def create_mailbox(self, name: MailboxName, *, subscribe: bool = False) -> None:
        with self.session() as imap:
            imap.command(b"CREATE", _astring(name))
            if subscribe:
                imap.command(b"SUBSCRIBE", _astring(name))

    def delete_mailbox(self, name: MailboxName) -> None:
        with self.session() as imap:
            imap.command(b"DELETE", _astring(name))

    def rename_mailbox(self, old: MailboxName, new: MailboxName) -> None:
        with self.session() as imap:
            imap.command(b"RENAME", _astring(old), _astring(new))

    def subscribe(self, name: MailboxName) -> None:
        with self.session() as imap:
            imap.command(b"SUBSCRIBE", _astring(name))

    def unsubscribe(self, name: MailboxName) -> None:
        with self.session() as imap:
            imap.command(b"UNSUBSCRIBE", _astring(name))

    def append(
        self,
        mailbox: MailboxName,
        message: bytes,
        flags: Flags = (),
        internaldate: InternalDate = None,
    ) -> int:
        """APPEND one message; return its UID."""
        return self.append_many(mailbox, [(message, flags, internaldate)])[0]

    def append_many(self, mailbox: MailboxName, messages: Iterable[AppendItem]) -> list[int]:
        """APPEND messages in MULTIAPPEND batches over one session; return UIDs in order.

        Dovecot replaces INTERNALDATEs in the future by the current time.
        """
        uids: list[int] = []
        with self.session() as imap:
            for batch in _batches(messages):
                args: list[Union[bytes, Literal]] = [b"APPEND", _astring(mailbox)]
                for message, flags, internaldate in batch:
                    args.append(_flag_list(flags))
                    if internaldate is not None:
                        args.append(_format_internaldate(internaldate))
                    args.append(Literal(message))
                code = imap.command(*args).codes(b"APPENDUID")
                if not code:
                    raise DovecotError("APPEND without [APPENDUID]: UIDPLUS missing?")
                uids.extend(_parse_uid_set(code[0][2]))
        return uids

    def set_flags(
        self,
        mailbox: MailboxName,
        uids: Union[int, Iterable[int]],
        flags: Flags,
        *,
        mode: str = "replace",
    ) -> None:
        """Replace (or, with mode "add"/"remove", change) the flags of messages."""
        item = {"replace": b"FLAGS.SILENT", "add": b"+FLAGS.SILENT", "remove": b"-FLAGS.SILENT"}
        with self.session() as imap:
            imap.select(mailbox)
            imap.command(b"UID STORE", _uid_set(uids), item[mode], _flag_list(flags))

    def expunge(self, mailbox: MailboxName, uids: Union[int, Iterable[int]]) -> None:
        uid_set = _uid_set(uids)
        with self.session() as imap:
            imap.select(mailbox)
            # One after the other: pipelined, Dovecot was seen to reorder them.
            imap.command(b"UID STORE", uid_set, b"+FLAGS.SILENT", b"(\\Deleted)")
            imap.command(b"UID EXPUNGE", uid_set)

    def list_mailboxes(self) -> dict[str, MailboxInfo]:
        """All mailboxes (LIST "" "*"), by decoded name."""
        with self.session() as imap:
            return _list_mailboxes(imap)

    def subscriptions(self) -> frozenset[tuple[str, ...]]:
        """Subscribed names (existing or not), as separator-free paths."""
        with self.session() as imap:
            result = imap.command(b"LIST", b"(SUBSCRIBED)", b'""', b'"*"')
        return frozenset(_mailbox_info(r).path for r in result.data(b"LIST"))

    def messages(self, mailbox: MailboxName) -> list[MessageInfo]:
        """Every message of ``mailbox``, by UID."""
        with self.session() as imap:
            return _messages(imap, mailbox)

    def body(self, mailbox: MailboxName, uid: int) -> bytes:
        with self.session() as imap:
            imap.select(mailbox, readonly=True)
            result = imap.command(b"UID FETCH", b"%d" % uid, b"(UID BODY.PEEK[])")
        for response in result.data(b"FETCH"):
            items = _pairs(response[2])
            if int(items[b"UID"]) == uid:
                return bytes(items[b"BODY[]"])
        raise DovecotError(f"no message with UID {uid}")

    def status(self, mailbox: MailboxName) -> dict[str, int]:
        """STATUS: MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ UNSEEN."""
        with self.session() as imap:
            result = imap.command(
                b"STATUS",
                _astring(mailbox),
                b"(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ UNSEEN)",
            )
        items = _pairs(result.data(b"STATUS")[0][2])
        return {k.decode(): int(v) for k, v in items.items()}

    def snapshot(self, *, internaldate: bool = False) -> Snapshot:
        """The whole store, comparable across servers and separators.

        Selectable mailboxes by path (name split on its separator), each
        with a sorted list of (body sha256, sorted flags without \\Recent),
        plus the INTERNALDATE as UTC ISO text when asked.
        """
        snapshot: Snapshot = {}
        with self.session() as imap:
            for info in _list_mailboxes(imap).values():
                if not info.selectable:
                    continue
                entries = []
                for message in _messages(imap, info.raw):
                    flags = tuple(sorted(f for f in message.flags if f.lower() != "\\recent"))
                    entry: tuple[Any, ...] = (message.sha256, flags)
                    if internaldate:
                        utc = message.internaldate.astimezone(datetime.UTC)
                        entry += (utc.isoformat(),)
                    entries.append(entry)
                snapshot[info.path] = sorted(entries)
        return snapshot

    def log_problems(self) -> list[str]:
        """Error/Fatal/Panic lines of the tunnel log (an empty list is good)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if re.search(r"\b(Error|Fatal|Panic):", line)]


def _batches(messages: Iterable[AppendItem]) -> Iterator[list[tuple[bytes, Flags, InternalDate]]]:
    batch: list[tuple[bytes, Flags, InternalDate]] = []
    size = 0
    for item in messages:
        entry = (item, (), None) if isinstance(item, bytes) else item
        if batch and (size + len(entry[0]) > _BATCH_BYTES or len(batch) >= _BATCH_MESSAGES):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += len(entry[0])
    if batch:
        yield batch


def _pairs(items: list[Any]) -> dict[bytes, Any]:
    return {_upper(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _mailbox_info(response: list[Any]) -> MailboxInfo:
    _, attributes, separator, raw = response[:4]
    attrs_ = frozenset(a.decode("ascii") for a in attributes)
    return MailboxInfo(
        name=_mutf7_decode(raw),
        raw=raw,
        separator=separator.decode("ascii") if separator is not None else None,
        attributes=attrs_,
        subscribed="\\subscribed" in {a.lower() for a in attrs_},
    )


def _list_mailboxes(imap: IMAPConnection) -> dict[str, MailboxInfo]:
    result = imap.command(b"LIST", b'""', b'"*"', b"RETURN", b"(SUBSCRIBED)")
    infos = (_mailbox_info(r) for r in result.data(b"LIST"))
    return {info.name: info for info in infos}


def _messages(imap: IMAPConnection, mailbox: MailboxName) -> list[MessageInfo]:
    if imap.select(mailbox, readonly=True)["EXISTS"] == 0:
        return []
    result = imap.command(b"UID FETCH", b"1:*", b"(UID FLAGS INTERNALDATE MODSEQ RFC822.SIZE)")
    metadata = {
        int(items[b"UID"]): items for items in (_pairs(r[2]) for r in result.data(b"FETCH"))
    }
    uids = sorted(metadata)
    digests: dict[int, str] = {}
    # Bodies in chunks: memory stays bounded on benchmark-sized mailboxes.
    for i in range(0, len(uids), _BATCH_MESSAGES):
        chunk = imap.command(
            b"UID FETCH", _uid_set(uids[i : i + _BATCH_MESSAGES]), b"(UID BODY.PEEK[])"
        )
        for response in chunk.data(b"FETCH"):
            items = _pairs(response[2])
            digests[int(items[b"UID"])] = hashlib.sha256(items[b"BODY[]"] or b"").hexdigest()
    return [
        MessageInfo(
            uid=uid,
            flags=frozenset(f.decode("ascii") for f in metadata[uid][b"FLAGS"]),
            internaldate=_parse_internaldate(metadata[uid][b"INTERNALDATE"]),
            sha256=digests[uid],
            size=int(metadata[uid][b"RFC822.SIZE"]),
            modseq=int(metadata[uid][b"MODSEQ"][0]),
        )
        for uid in uids
    ]


# --- a standalone store (tunnel only) ----------------------------------------------


class DovecotStore(MailStore):
    """A self-contained Dovecot mail store under ``directory``, reached by a tunnel.

    Nothing outside ``directory`` is used (no /etc/dovecot, no daemon).
    As root, imap runs as nobody (Dovecot refuses mail access as root).
    ``mail_format`` is "sdbox" (default), "mdbox" or "maildir" (Maildir++
    for separator ".", LAYOUT=fs otherwise); ``extra_config`` is appended
    to the Dovecot config.
    """

    def __init__(
        self,
        directory: Union[str, os.PathLike[str]],
        separator: str = "/",
        name: str = "local",
        *,
        mail_format: str = "sdbox",
        extra_config: str = "",
        paths: Optional[DovecotPaths] = None,
        timeout: float = 30.0,
    ) -> None:
        self.paths = _required_paths(paths)
        self.name = name
        self.directory = Path(directory).absolute()
        _check_config_path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = self.directory / "dovecot.conf"
        log_path = self.directory / "imap.log"
        self.home = self.directory / "home"
        self.mail_path = self.home / "mail"
        user = _mail_user()
        self.mail_path.mkdir(parents=True, exist_ok=True)
        _chown_tree(self.home, user)
        if user is not None:
            _make_traversable(self.directory)
        self.config_path.write_text(
            "# Generated by tests/dovecot.py: a daemon-less store for imap tunnels.\n"
            f"base_dir = {self.directory}/run\n"
            f"state_dir = {self.directory}/state\n"
            f"log_path = {log_path}\n"
            # No stats process to report to (and the socket path may be too long).
            "stats_writer_socket_path =\n"
            "ssl = no\n" + _mail_settings(mail_format, separator, user, extra_config)
        )
        script = self.directory / "tunnel.sh"
        _write_tunnel_script(script, self.paths, self.config_path, name, self.home, log_path, user)
        # Run through sh: exec permission on temp dirs is not guaranteed.
        super().__init__(["/bin/sh", str(script)], separator, log_path, timeout)


# --- a network daemon ------------------------------------------------------------


def _parent_death_signal() -> Optional[Callable[[], None]]:
    """A preexec_fn so that the daemon gets SIGTERM if the test runner dies.

    The signal follows the thread that forked: only from the main thread.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_ports(host: str, count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _process_start_time(pid: int) -> Optional[str]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every descendant of ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            start = _process_start_time(child)
            if start is not None:
                found.append((child, start))
                todo.append(child)
    return found


def _pem_file(value: Union[bytes, str, os.PathLike[str]], path: Path, mode: int) -> Path:
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        data = value.encode("ascii")
    else:
        data = Path(value).read_bytes()
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


class DovecotDaemon:
    """A real Dovecot (master, imap-login, auth) on loopback, ephemeral ports.

    Plain imap (STARTTLS offered when a certificate is given) and imaps,
    passwords from ``users``, mail stored as in DovecotStore under
    ``directory/users/NAME``; ``store(NAME)`` inspects it over a tunnel.
    ``start()`` it, and ``stop()`` it (e.g. ``addCleanup``).

    Dovecot counts a connection whose remote and local addresses are equal
    as secured, so plaintext auth would be allowed from 127.0.0.1 to
    127.0.0.1 whatever the settings. With ``plaintext_auth=False`` the
    daemon therefore listens on 127.0.0.2 by default (clients connect from
    127.0.0.1), so that LOGINDISABLED/PRIVACYREQUIRED show.

    ``auth_mechanisms`` are the SASL mechanisms (AUTH=...); ``login_capability``
    becomes ``imap_capability`` (a full list, or "+EXTRA" to add), which the
    login greeting and, after login, imap use. ``mail_config`` is added to
    the mail settings (daemon and tunnels), ``extra_config`` to the daemon's
    config only. Failed logins answer after 0.5 s, without Dovecot's
    growing per-IP penalty.
    """

    def __init__(
        self,
        directory: Union[str, os.PathLike[str]],
        users: Optional[Mapping[str, str]] = None,
        certificate: Union[bytes, str, os.PathLike[str], None] = None,
        key: Union[bytes, str, os.PathLike[str], None] = None,
        *,
        separator: str = "/",
        mail_format: str = "sdbox",
        plaintext_auth: bool = True,
        auth_mechanisms: Sequence[str] = ("plain", "login"),
        login_capability: Optional[str] = None,
        host: Optional[str] = None,
        mail_config: str = "",
        extra_config: str = "",
        paths: Optional[DovecotPaths] = None,
    ) -> None:
        self.paths = _required_paths(paths)
        self.directory = Path(directory).absolute()
        _check_config_path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.users = dict(users if users is not None else {"alice": "secret"})
        self.separator = separator
        self.host = host or ("127.0.0.1" if plaintext_auth else "127.0.0.2")
        self.config_path = self.directory / "dovecot.conf"
        self.log_path = self.directory / "dovecot.log"
        self.imap_port: Optional[int] = None
        self.imaps_port: Optional[int] = None
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._base_dir: Optional[Path] = None
        self._user = _mail_user()
        self._tls = certificate is not None
        if self._tls != (key is not None):
            raise ValueError("give both certificate and key, or neither")
        self._options = (plaintext_auth, tuple(auth_mechanisms), login_capability)
        self._extra_config = extra_config
        if self._user is not None:
            _make_traversable(self.directory)
        homes = self.directory / "users"
        for name, password in self.users.items():
            if not re.fullmatch(r"[A-Za-z0-9._@-]+", name) or re.search(r"[:\s]", password):
                raise ValueError(f"unusable user name or password for {name!r}")
            (homes / name / "mail").mkdir(parents=True, exist_ok=True)
        _chown_tree(homes, self._user)
        if certificate is not None and key is not None:
            _pem_file(certificate, self.directory / "cert.pem", 0o644)
            _pem_file(key, self.directory / "key.pem", 0o600)
        (self.directory / "passwd").write_text(
            "".join(f"{name}:{{PLAIN}}{password}::::::\n" for name, password in self.users.items())
        )
        (self.directory / "mail.conf.ext").write_text(
            _mail_settings(mail_format, separator, self._user, mail_config)
        )
        # Tunnels read their own config: the daemon's one names a key that
        # the unprivileged mail user cannot read.
        (self.directory / "tunnel.conf").write_text(
            "# Generated by tests/dovecot.py: tunnels into the daemon's stores.\n"
            f"base_dir = {self.directory}/tunnel-run\n"
            f"state_dir = {self.directory}/state\n"
            "stats_writer_socket_path =\n"
            "ssl = no\n"
            f"!include {self.directory}/mail.conf.ext\n"
        )

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> DovecotDaemon:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def store(self, user: str) -> MailStore:
        """The mail of ``user``, for seeding and inspection over a tunnel."""
        if user not in self.users:
            raise KeyError(user)
        log_path = self.directory / "imap.log"
        script = self.directory / f"tunnel-{user}.sh"
        _write_tunnel_script(
            script,
            self.paths,
            self.directory / "tunnel.conf",
            user,
            self.directory / "users" / user,
            log_path,
            self._user,
        )
        return MailStore(["/bin/sh", str(script)], self.separator, log_path)

    def _write_config(self, base_dir: Path) -> None:
        plaintext_auth, mechanisms, login_capability = self._options
        if self._user is not None:
            unprivileged: list[str] = []
            chroot: list[str] = []
            userdb = f"uid={self._user.uid} gid={self._user.gid} home={self.directory}/users/%u"
        else:
            # Not root: every service runs as ourselves, and cannot chroot.
            me, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
            unprivileged = [
                f"default_login_user = {me}",
                f"default_internal_user = {me}",
                f"default_internal_group = {group}",
            ]
            chroot = ["  chroot ="]
            userdb = f"home={self.directory}/users/%u"
        lines = [
            "# Generated by tests/dovecot.py: a loopback daemon for tests.",
            f"base_dir = {base_dir}",
            f"state_dir = {self.directory}/state",
            f"log_path = {self.log_path}",
            *unprivileged,
            "protocols = imap",
            f"listen = {self.host}",
            f"disable_plaintext_auth = {'no' if plaintext_auth else 'yes'}",
            f"auth_mechanisms = {' '.join(mechanisms)}",
            "auth_verbose = yes",
            # Failed logins answer in 0.5 s, not 2 s growing to 15 s from the
            # anvil penalty that would slow every later login from 127.0.0.1.
            "auth_failure_delay = 0",
            "service anvil {",
            *chroot,
            "  unix_listener anvil-auth-penalty {",
            "    mode = 0",
            "  }",
            "}",
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=PLAIN username_format=%u {self.directory}/passwd",
            "}",
            "userdb {",
            "  driver = static",
            f"  args = {userdb}",
            "}",
            "service imap-login {",
            *chroot,
            "  inet_listener imap {",
            f"    port = {self.imap_port}",
            "  }",
            "  inet_listener imaps {",
            f"    port = {self.imaps_port if self._tls else 0}",
            "    ssl = yes",
            "  }",
            "}",
            f"!include {self.directory}/mail.conf.ext",
        ]
        if self._tls:
            lines += [
                "ssl = yes",
                f"ssl_cert = <{self.directory}/cert.pem",
                f"ssl_key = <{self.directory}/key.pem",
            ]
        else:
            lines.append("ssl = no")
        if login_capability is not None:
            # Used by imap-login for its greeting/CAPABILITY, and after login.
            lines += ["protocol imap {", f"  imap_capability = {login_capability}", "}"]
        lines.append(self._extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 15.0) -> None:
        """Start Dovecot in the foreground and wait until its ports accept."""
        if self._proc is not None:
            raise DovecotError("already started")
        deadline = time.monotonic() + timeout
        for _attempt in range(3):
            ports = _free_ports(self.host, 2)
            self.imap_port = ports[0]
            self.imaps_port = ports[1] if self._tls else None
            # Unix socket paths must fit in 107 bytes: a short base_dir in /tmp.
            self._base_dir = Path(tempfile.mkdtemp(prefix="dc", dir="/tmp"))
            os.chmod(self._base_dir, 0o755)
            self._write_config(self._base_dir)
            startup_log = self.directory / "startup.log"
            with open(startup_log, "ab") as output:
                self._proc = subprocess.Popen(
                    [self.paths.dovecot, "-F", "-c", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_parent_death_signal(),
                )
            if self._wait_ready(deadline):
                return
            reason = startup_log.read_text(errors="replace") + self._log_tail()
            self.stop()
            if "Address already in use" not in reason:
                raise DovecotError(f"Dovecot did not start:\n{reason}")
        raise DovecotError("Dovecot did not start: no free ports after 3 attempts")

    def _wait_ready(self, deadline: float) -> bool:
        """Wait for a greeting on the imap port (imap-login really works)
        and a connection on the imaps port."""
        assert self._proc is not None and self.imap_port is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.imap_port), timeout=1.0) as s:
                    if s.makefile("rb").readline().startswith(b"* OK"):
                        if self.imaps_port is not None:
                            socket.create_connection((self.host, self.imaps_port), 1.0).close()
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except FileNotFoundError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        """Stop Dovecot by PID and wait until its processes are gone; idempotent.

        TERM goes to the master and to each of its children (by PID) at
        once: left to itself the master takes ~2.5 s to shut down. KILL
        follows after ``grace`` seconds.
        """
        proc, self._proc = self._proc, None
        if proc is not None:
            children = _descendants(proc.pid)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
            for pid, start in children:
                _signal_process(pid, start, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(grace)
            deadline = time.monotonic() + grace
            for pid, start in children:
                while _process_start_time(pid) == start:
                    if time.monotonic() > deadline + grace:
                        raise DovecotError(f"Dovecot process {pid} survived SIGKILL")
                    if time.monotonic() > deadline:
                        _signal_process(pid, start, signal.SIGKILL)
                    time.sleep(0.01)
        if self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None


def _signal_process(pid: int, start: str, sig: int) -> None:
    """Signal ``pid`` unless it has exited (and its number been reused)."""
    if _process_start_time(pid) == start:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# --- the capability-stripping tunnel filter (this file run as a script) -----------


class _FilterState:
    """What the two relay directions share: a pending COMPRESS command."""

    def __init__(self) -> None:
        self.compress_tag: Optional[bytes] = None
        self.verdict = threading.Event()
        self.compressed = False


class _ClientScanner:
    """Follow client commands (literals skipped) to spot ``TAG COMPRESS``."""

    def __init__(self) -> None:
        self._line = bytearray()
        self._literal = 0
        self._command_start = True

    def feed(self, data: bytes) -> Optional[bytes]:
        pos = 0
        while pos < len(data):
            if self._literal:
                taken = min(self._literal, len(data) - pos)
                self._literal -= taken
                pos += taken
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._line += data[pos:]
                break
            line = bytes(self._line + data[pos : end + 1])
            self._line.clear()
            pos = end + 1
            at_start, literal = self._command_start, _LITERAL_AT_END.search(line)
            self._command_start = literal is None
            if literal is not None:
                self._literal = int(literal.group(1))
            elif at_start and (m := re.match(rb"(\S+) COMPRESS ", line, re.I)):
                return m.group(1)
        return None


class _ServerFilter:
    """Rewrite server output line by line, literals passed through."""

    def __init__(self, capabilities: frozenset[bytes], state: _FilterState) -> None:
        self._caps = capabilities
        self._state = state
        self._line = bytearray()
        self._literal = 0

    def _strip(self, match: re.Match[bytes]) -> bytes:
        kept = [c for c in match.group(2).split(b" ") if c.upper() not in self._caps]
        return match.group(1) + b" ".join(kept)

    def _rewrite(self, line: bytes) -> bytes:
        line = re.sub(rb"(\[CAPABILITY )([^\]]*)", self._strip, line, flags=re.I)
        return re.sub(rb"^(\* CAPABILITY )([^\r\n]*)", self._strip, line, flags=re.I)

    def feed(self, data: bytes) -> tuple[bytes, Optional[bytes]]:
        """Return (output, rest); ``rest`` is not None once COMPRESS is active."""
        out = bytearray()
        pos = 0
        while pos < len(data):
            if self._literal:
                taken = min(self._literal, len(data) - pos)
                out += data[pos : pos + taken]
                self._literal -= taken
                pos += taken
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._line += data[pos:]
                break
            line = bytes(self._line + data[pos : end + 1])
            self._line.clear()
            pos = end + 1
            literal = _LITERAL_AT_END.search(line)
            if literal is not None:
                self._literal = int(literal.group(1))
            out += self._rewrite(line)
            tag = self._state.compress_tag
            if tag is not None and line.startswith(tag + b" "):
                self._state.compress_tag = None
                self._state.compressed = line[len(tag) + 1 :].upper().startswith(b"OK")
                self._state.verdict.set()
                if self._state.compressed:
                    return bytes(out), data[pos:]
        return bytes(out), None


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _filter_main(argv: list[str]) -> int:
    """strip-capabilities CAP[,CAP...] -- COMMAND...: relay, hiding CAPs."""
    if len(argv) < 4 or argv[0] != "strip-capabilities" or argv[2] != "--":
        print("usage: dovecot.py strip-capabilities CAP[,CAP] -- COMMAND...", file=sys.stderr)
        return 2
    caps = frozenset(c.encode("ascii").upper() for c in argv[1].split(",") if c)
    proc = subprocess.Popen(argv[3:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdin is not None and proc.stdout is not None
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.terminate())
    state = _FilterState()
    to_server = proc.stdin.fileno()

    def upstream() -> None:
        scanner: Optional[_ClientScanner] = _ClientScanner()
        try:
            while data := os.read(0, 1 << 16):
                tag = scanner.feed(data) if scanner is not None else None
                if tag is not None:
                    state.verdict.clear()
                    state.compress_tag = tag
                _write_fd(to_server, data)
                # After COMPRESS the client stream is deflated: stop scanning.
                if tag is not None and state.verdict.wait(60) and state.compressed:
                    scanner = None
        except OSError:
            pass
        finally:
            proc.stdin.close()  # type: ignore[union-attr]

    threading.Thread(target=upstream, daemon=True).start()
    server = _ServerFilter(caps, state)
    inflate: Optional[Any] = None
    deflate: Optional[Any] = None
    try:
        while chunk := os.read(proc.stdout.fileno(), 1 << 16):
            pending: Optional[bytes] = chunk
            while pending:
                plain = inflate.decompress(pending) if inflate is not None else pending
                output, rest = server.feed(plain)
                if deflate is not None and output:
                    output = deflate.compress(output) + deflate.flush(zlib.Z_SYNC_FLUSH)
                _write_fd(1, output)
                if rest is not None:
                    inflate = zlib.decompressobj(-15)
                    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
                pending = rest
    except BrokenPipeError:
        proc.terminate()
    return proc.wait()


if __name__ == "__main__":
    sys.exit(_filter_main(sys.argv[1:]))

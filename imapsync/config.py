# -*- test-case-name: tests.test_config -*-
"""The configuration file: interimap's INI dialect, read into value objects.

`load_config` finds the file (XDG base directories), checks every key and
value, and returns a `Config` whose two sides carry the `ServerSettings` that
`imapsync.imap.connect.open_session` takes.  An interimap configuration file
loads unchanged.

Syntax (interimap's, which is Config::Tiny's): lines are ``key = value``,
``[section]``, or comments starting with ``#`` or ``;``.  As in Config::Tiny,
`` ; `` (whitespace, semicolon, whitespace) followed by text starts a comment
at the end of any line, and whitespace around keys and values is dropped.
Keys before the first section form the default section: its per-server
keys are inherited by ``[local]`` and ``[remote]``, whose own values win.
Key names are case-sensitive (``STARTTLS``, ``SSL_CAfile``), booleans are
``YES`` or ``NO`` in any case.

Mailbox names (``list-mailbox``, ``list-reference``) are read the way
interimap reads them, as their modified UTF-7 wire form (``Entw&APw-rfe``),
and may also be written as UTF-8 text (``Entwürfe``): see `mailbox_to_wire`.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import pwd
import re
import socket
import stat
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Tuple

import attrs

from imapsync.imap.connect import ServerSettings
from imapsync.imap.socks import ProxyURL, parse_proxy_url
from imapsync.imap.tls import ClientTLSCreator, TLSConfigError, TLSSettings, parse_fingerprint
from imapsync.imap.utf7 import MailboxNameError, decode_mailbox, encode_mailbox

__all__ = [
    "DEFAULT_LOG_PREFIX",
    "Config",
    "ConfigError",
    "ConfigFileMissingError",
    "ProxySettings",
    "SideConfig",
    "data_directory",
    "format_log_prefix",
    "load_config",
    "mailbox_to_wire",
    "resolve_config_path",
]

# interimap's default: "local(INBOX): ", "local: ", or nothing.
DEFAULT_LOG_PREFIX = "%?n?%?m?%n(%m)&%n?: ?"


class ConfigError(Exception):
    """The configuration is wrong; the message names the file, line and key.

    ``str(error)`` is the text to print after ``ERROR: ``.
    """

    exit_code = 78  # EX_CONFIG

    def __init__(self, message: str, path: Optional[str] = None, line: Optional[int] = None):
        super().__init__(message, path, line)
        self.message = message
        self.path = path
        self.line = line

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        if self.line is None:
            return f"{self.path}: {self.message}"
        return f"{self.path} line {self.line}: {self.message}"


class ConfigFileMissingError(ConfigError):
    """The configuration file does not exist or cannot be read."""

    exit_code = 2

    def __str__(self) -> str:
        return self.message


# The ``proxy`` key, parsed: scheme ("socks5" resolves the server's name
# locally, "socks5h" lets the proxy do it), host (no brackets), port,
# username, password.  The connector's own type, so both read URLs alike.
ProxySettings = ProxyURL


@attrs.frozen
class SideConfig:
    """One side (``[local]`` or ``[remote]``) of the synchronization."""

    server: ServerSettings
    list_reference: bytes = b""
    proxy: Optional[ProxySettings] = None


@attrs.frozen
class Config:
    """The whole configuration file, checked.

    ``list_mailbox`` holds LIST patterns in wire form, with NUL standing for
    the hierarchy delimiter; empty means ``*``.  ``ignore_mailbox`` is
    searched (not matched) in names without the list-reference and with the
    delimiter replaced by NUL: use `ignores`.  ``warnings`` are for the log.
    """

    path: str
    database: str
    local: SideConfig
    remote: SideConfig
    logfile: Optional[str] = None
    log_prefix: str = DEFAULT_LOG_PREFIX
    list_mailbox: Tuple[bytes, ...] = ()
    list_select_opts: Tuple[bytes, ...] = ()
    ignore_mailbox: Optional[re.Pattern[bytes]] = None
    warnings: Tuple[str, ...] = ()
    notes: Tuple[str, ...] = ()

    def ignores(self, mailbox: bytes) -> bool:
        """Whether ignore-mailbox excludes C{mailbox} (NUL for the delimiter)."""
        return self.ignore_mailbox is not None and self.ignore_mailbox.search(mailbox) is not None


# Keys.  Global keys may only appear in the default section.
GLOBAL_KEYS = (
    "database",
    "logfile",
    "log-prefix",
    "list-mailbox",
    "list-select-opts",
    "ignore-mailbox",
)
SIDE_KEYS = (
    "type",
    "host",
    "port",
    "command",
    "STARTTLS",
    "auth",
    "username",
    "password",
    "list-reference",
    "compress",
    "null-stderr",
    "proxy",
    "SSL_fingerprint",
    "SSL_verify",
    "SSL_CAfile",
    "SSL_CApath",
    "SSL_hostname",
    "SSL_protocol_min",
    "SSL_protocol_max",
    "SSL_protocols",
    "SSL_cipherlist",
    "SSL_ciphersuites",
)
# The seed manual's spellings.
ALIASES = {
    "SSL_verify_trusted_peer": "SSL_verify",
    "SSL_ca_path": "SSL_CApath",
    "SSL_cipher_list": "SSL_cipherlist",
}
_ALL_SPELLINGS = GLOBAL_KEYS + SIDE_KEYS + tuple(ALIASES)
_MAY_BE_EMPTY = frozenset(
    {"SSL_hostname", "SSL_ciphersuites", "list-reference", "list-select-opts", "log-prefix"}
)
SIDES = ("local", "remote")
_DEFAULT = ""  # the default section's name here
# The keys of TLSSettings that TLSConfigError messages name, for finding the line.
_TLS_KEYS = (
    "SSL_fingerprint",
    "SSL_protocol_min",
    "SSL_protocol_max",
    "SSL_cipherlist",
    "SSL_ciphersuites",
    "SSL_CAfile",
    "SSL_CApath",
)
# interimap's SSL_protocols names, oldest first.
_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_AUTH_MECHANISMS = ("PLAIN", "LOGIN")

# Config::Tiny's grammar.
_LINE_BREAK = re.compile(rb"\r{1,2}\n|\r|\n")
_SKIP = re.compile(r"\s*(?:[#;]|$)")
_INLINE_COMMENT = re.compile(r"\s;\s.+$")
_SECTION = re.compile(r"\s*\[\s*(.+?)\s*\]\s*$")
_PROPERTY = re.compile(r"\s*([^=]+?)\s*=\s*(.*?)\s*$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tabs are spaces

# list-mailbox words: interimap's, plus non-ASCII characters.
_LIST_WORD = re.compile(r'[^\s"()\\{\x00-\x1f\x7f]+')
_LIST_QUOTED = re.compile(r'"((?:[^"\\\x00-\x1f\x7f]|\\(?:["\\0abtnvfr]|x[0-9A-Fa-f]{2}))+)"')
_LIST_ESCAPE = re.compile(r'\\(["\\0abtnvfr]|x[0-9A-Fa-f]{2})')
_C_ESCAPES = {
    '"': 0x22,
    "\\": 0x5C,
    "0": 0x00,
    "a": 0x07,
    "b": 0x08,
    "t": 0x09,
    "n": 0x0A,
    "v": 0x0B,
    "f": 0x0C,
    "r": 0x0D,
}
_SPACES = re.compile(r"\s+")
_ATOM = re.compile(r"[\x21\x23\x24\x26\x27\x2B-\x5B\x5E-\x7A\x7C-\x7E]+")


# --- Paths -----------------------------------------------------------------


def _home(environ: Mapping[str, str]) -> str:
    home = environ.get("HOME")
    if home:
        return home
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return "/"


def _xdg_directory(environ: Mapping[str, str], variable: str, fallback: str) -> str:
    # The XDG spec: an unset, empty or relative value is ignored.
    value = environ.get(variable, "")
    if os.path.isabs(value):
        return value
    return os.path.join(_home(environ), fallback)


def _expand_user(path: str, environ: Mapping[str, str]) -> Optional[str]:
    """``~/x`` and ``~user/x`` expanded (HOME from C{environ}); None for an unknown user."""
    if not path.startswith("~"):
        return path
    user, slash, rest = path[1:].partition("/")
    if not user:
        home = _home(environ)
    else:
        try:
            home = pwd.getpwnam(user).pw_dir
        except KeyError:
            return None
    return home + slash + rest if rest or slash else home


def resolve_config_path(path: Optional[str], environ: Mapping[str, str] = os.environ) -> str:
    """The absolute path of the configuration file.

    Default: ``$XDG_CONFIG_HOME/imapsync/config`` (``~/.config/...``); a
    relative C{path} starts from ``$XDG_CONFIG_HOME`` (or ``~/.config``).
    """
    base = _xdg_directory(environ, "XDG_CONFIG_HOME", ".config")
    if path is None:
        return os.path.join(base, "imapsync", "config")
    expanded = _expand_user(path, environ)
    if expanded is None:
        raise ConfigFileMissingError(f"no such user in configuration file path {path!r}")
    return os.path.abspath(os.path.join(base, expanded))


def _database_path(name: str, environ: Mapping[str, str], notes: List[str]) -> str:
    """Where the database ``name`` (absolute, or relative to the data directory) is.

    An interimap configuration used as is names interimap's database
    relative to *its* data directory: when ours holds no such file and
    interimap's does, that one is the state of these servers, and starting
    afresh would copy every message again.
    """
    path = os.path.abspath(os.path.join(data_directory(environ), name))
    if os.path.isabs(name) or os.path.exists(path):
        return path
    theirs = os.path.abspath(
        os.path.join(_xdg_directory(environ, "XDG_DATA_HOME", ".local/share"), "interimap", name)
    )
    if os.path.exists(theirs):
        notes.append(f"using interimap's database {theirs}")
        return theirs
    return path


def data_directory(environ: Mapping[str, str] = os.environ) -> str:
    """Where a relative (or the default) database lives:
    ``$XDG_DATA_HOME/imapsync`` (``~/.local/share/imapsync``)."""
    return os.path.join(_xdg_directory(environ, "XDG_DATA_HOME", ".local/share"), "imapsync")


# --- Mailbox names ---------------------------------------------------------


def mailbox_to_wire(name: str) -> bytes:
    """The wire form of a mailbox name or LIST pattern written by a user.

    interimap takes names as their modified UTF-7 wire form; so does this
    for an all-ASCII name that is canonical modified UTF-7
    (``Entw&APw-rfe``, ``INBOX``, ``*``).  Any other name is text and is
    encoded (``Entwürfe`` and ``Tom&Jerry`` become ``Entw&APw-rfe`` and
    ``Tom&-Jerry``).  NUL characters (the hierarchy delimiter's stand-in)
    are kept.  MailboxNameError for what cannot be encoded (a lone
    surrogate from an undecodable command line).
    """
    return b"\0".join(_part_to_wire(part) for part in name.split("\0"))


def _part_to_wire(name: str) -> bytes:
    if name.isascii():
        wire = name.encode("ascii")
        try:
            decode_mailbox(wire)
        except MailboxNameError:
            pass
        else:
            return wire
    return encode_mailbox(name)


# --- log-prefix ------------------------------------------------------------


def _conditional_header(text: str, i: int) -> bool:
    # Perl's /a makes [[:alpha:]] ASCII letters only.
    return (
        text.startswith("%?", i)
        and i + 3 < len(text)
        and text[i + 2].isascii()
        and text[i + 2].isalpha()
        and text[i + 3] == "?"
    )


def _match_conditional(text: str, start: int) -> Optional[Tuple[int, str, str, str]]:
    """Match interimap's recursive conditional regex at C{start}.

    Returns (end, letter, then, else) or None.  The Perl regex cannot
    backtrack into a different match (runs are atomic and every branch
    ends at '&' or '?'), so this greedy scan finds the same one.
    """
    if not _conditional_header(text, start):
        return None
    letter = text[start + 2]
    has_else = [False]  # one per open conditional
    then_end = else_start = -1
    i = start + 4
    while i < len(text):
        c = text[i]
        if c == "%":
            if i + 1 < len(text) and text[i + 1] != "?":
                i += 2
            elif _conditional_header(text, i):
                has_else.append(False)
                i += 4
            else:
                return None
        elif c == "\\":
            if text[i + 1 : i + 2] not in ("&", "?", "\\"):
                return None
            i += 2
        elif c == "&":
            if has_else[-1]:
                return None
            has_else[-1] = True
            if len(has_else) == 1:
                then_end, else_start = i, i + 1
            i += 1
        elif c == "?":
            has_else.pop()
            i += 1
            if not has_else:
                if then_end < 0:
                    return i, letter, text[start + 4 : i - 1], ""
                return i, letter, text[start + 4 : then_end], text[else_start : i - 1]
        else:
            i += 1
    return None


_UNESCAPE = re.compile(r"\\([&?\\])")
_SEQUENCE = re.compile(r"%([%mn])")


@functools.lru_cache(maxsize=256)
def _resolve_conditionals(template: str, has_name: bool, has_mailbox: bool) -> str:
    """interimap's _logger_prefix up to the %-sequences: rewrite conditionals
    (leftmost first, again and again for nested ones), then unescape."""
    defined = {"n": has_name, "m": has_mailbox}
    text = template
    while True:
        out: List[str] = []
        pos = 0
        rewritten = False
        while True:
            start = text.find("%?", pos)
            match = None
            while start >= 0:
                match = _match_conditional(text, start)
                if match is not None:
                    break
                start = text.find("%?", start + 1)
            if match is None:
                out.append(text[pos:])
                break
            end, letter, then, otherwise = match
            out.append(text[pos:start])
            out.append(then if defined.get(letter) else otherwise)
            pos = end
            rewritten = True
        text = "".join(out)
        if not rewritten:
            return _UNESCAPE.sub(r"\1", text)


def format_log_prefix(template: str, server: Optional[str], mailbox: Optional[str]) -> str:
    """Expand a log-prefix as interimap does.

    ``%n`` is the server ("local"/"remote"), ``%m`` the mailbox, ``%%`` a
    percent sign; ``%?X?then&else?`` is C{then} if ``%X`` expands to a
    non-empty string, else C{else} (optional); ``\\&``, ``\\?`` and
    ``\\\\`` are literal.
    """
    resolved = _resolve_conditionals(template, bool(server), bool(mailbox))
    values = {"%": "%", "n": server or "", "m": mailbox or ""}
    return _SEQUENCE.sub(lambda match: values[match.group(1)], resolved)


def _log_prefix_problem(template: str) -> Optional[str]:
    """What is wrong with a log-prefix, or None.

    Stricter than interimap, which prints malformed parts as they are: a
    template passing this check expands the same way in both programs.
    """
    open_conditionals: List[List[Any]] = []  # [letter, column, has_else]
    i = 0
    while i < len(template):
        c = template[i]
        column = i + 1
        following = template[i + 1 : i + 2]
        if c == "%":
            if following and following in "%mn":
                i += 2
                continue
            if following == "?":
                if not (len(template) > i + 3 and template[i + 3] == "?"):
                    return (
                        f"malformed conditional at column {column} (expected %?n?...? or %?m?...?)"
                    )
                letter = template[i + 2]
                if letter not in "nm":
                    return f"conditional on unknown %{letter} at column {column} (use n or m)"
                open_conditionals.append([letter, column, False])
                i += 4
                continue
            if not following:
                return "lone % at the end (write %% for a literal %)"
            return (
                f"unknown sequence %{following} at column {column}"
                " (use %n, %m, %%, or %?X?then&else?)"
            )
        if c == "\\":
            if following and following in "&?\\":
                i += 2
                continue
            return f"lone backslash at column {column} (write \\\\ for a literal backslash)"
        if c == "&":
            if not open_conditionals:
                return f"unescaped & at column {column} (write \\& for a literal &)"
            if open_conditionals[-1][2]:
                return f"second & in the conditional at column {open_conditionals[-1][1]}"
            open_conditionals[-1][2] = True
        elif c == "?":
            if not open_conditionals:
                return f"unescaped ? at column {column} (write \\? for a literal ?)"
            open_conditionals.pop()
        i += 1
    if open_conditionals:
        letter, column, _ = open_conditionals[-1]
        return f"unterminated conditional %?{letter}? at column {column} (end it with ?)"
    return None


# --- Parsing ---------------------------------------------------------------


@attrs.frozen
class _Entry:
    key: str  # canonical name
    spelling: str  # as written
    value: str
    line: int
    section: str


def _where(section: str) -> str:
    return f"[{section}]" if section else "the default section"


def _suggestion(word: str, choices: Tuple[str, ...]) -> str:
    for choice in choices:
        if choice.lower() == word.lower():
            return f" (did you mean {choice!r}? key names are case-sensitive)"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Loader:
    """One load: parse, check and assemble, with the file name for errors."""

    def __init__(self, path: str, environ: Mapping[str, str]) -> None:
        self.path = path
        self.environ = environ
        self.sections: Dict[str, Dict[str, _Entry]] = {_DEFAULT: {}}
        self.headers: Dict[str, int] = {}
        self.values: Dict[Tuple[str, str], Any] = {}
        self.warnings: List[str] = []
        # Informational messages for the log.
        self.notes: List[str] = []

    def fail(self, line: Optional[int], message: str) -> NoReturn:
        raise ConfigError(message, self.path, line)

    def bad(self, entry: _Entry, why: str) -> NoReturn:
        # Error messages end up in logs: never show a password.
        if entry.key == "password":
            shown = ""
        elif entry.key == "proxy":
            shown = f" {re.sub(r'//.*@', '//...@', entry.value)!r}"
        else:
            shown = f" {entry.value!r}"
        self.fail(entry.line, f"invalid {entry.spelling}{shown} in {_where(entry.section)}: {why}")

    # Lines

    def parse(self, data: bytes) -> None:
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        section = _DEFAULT
        for number, raw in enumerate(_LINE_BREAK.split(data), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                self.fail(number, f"not valid UTF-8 (byte {e.start + 1} of the line)")
            if _SKIP.match(line):
                continue
            line = _INLINE_COMMENT.sub("", line)
            header = _SECTION.match(line)
            if header is not None:
                section = self.section(header.group(1), number)
                continue
            match = _PROPERTY.match(line)
            if match is None:
                shown = "" if "pass" in line.lower() else f", not {line!r}"
                self.fail(
                    number,
                    f"syntax error: expected 'key = value', '[section]' or a comment{shown}",
                )
            self.add(section, match.group(1), match.group(2), number)

    def section(self, name: str, line: int) -> str:
        if name not in SIDES:
            hint = ""
            if name.lower() in SIDES:
                hint = f" (did you mean [{name.lower()}]? section names are case-sensitive)"
            self.fail(
                line,
                f"unknown section [{name}]{hint}: imapsync reads [local], [remote],"
                " and the default section before them",
            )
        self.sections.setdefault(name, {})
        self.headers.setdefault(name, line)
        return name

    def add(self, section: str, spelling: str, value: str, line: int) -> None:
        key = ALIASES.get(spelling, spelling)
        where = _where(section)
        if key not in GLOBAL_KEYS and key not in SIDE_KEYS:
            self.fail(
                line, f"unknown key {spelling!r} in {where}{_suggestion(spelling, _ALL_SPELLINGS)}"
            )
        if key in GLOBAL_KEYS and section:
            self.fail(
                line,
                f"{key} is only allowed in the default section, before [local] and [remote]"
                f" (found in {where})",
            )
        previous = self.sections[section].get(key)
        if previous is not None:
            also = "" if previous.spelling == spelling else f" as {previous.spelling!r}"
            self.fail(
                line,
                f"duplicate key {spelling!r} in {where}"
                f" (already set{also} on line {previous.line})",
            )
        entry = _Entry(key, spelling, value, line, section)
        if _CONTROL.search(value):
            self.bad(entry, "control characters are not allowed")
        if not value and key not in _MAY_BE_EMPTY:
            self.fail(line, f"no value for {spelling} in {where}")
        self.sections[section][key] = entry

    # Values, each checked where it is written

    def check_values(self) -> None:
        entries = [entry for section in self.sections.values() for entry in section.values()]
        for entry in sorted(entries, key=lambda entry: entry.line):
            check = _CHECKS[entry.key]
            self.values[(entry.section, entry.key)] = check(self, entry)

    def yes_no(self, entry: _Entry) -> bool:
        value = entry.value.upper()
        if value not in ("YES", "NO"):
            self.bad(entry, "expected YES or NO")
        return value == "YES"

    def text(self, entry: _Entry) -> str:
        return entry.value

    def word(self, entry: _Entry) -> str:
        if _SPACES.search(entry.value):
            self.bad(entry, "spaces are not allowed")
        return entry.value

    def kind(self, entry: _Entry) -> str:
        if entry.value not in ("imap", "imaps", "tunnel"):
            self.bad(entry, "expected imap, imaps or tunnel")
        return entry.value

    def host(self, entry: _Entry) -> str:
        value = entry.value
        if _SPACES.search(value) or "/" in value:
            self.bad(entry, "not a host name or IP address")
        if value.startswith("[") or value.endswith("]"):
            if not (value.startswith("[") and value.endswith("]")) or not _is_ip(value[1:-1]):
                self.bad(entry, "[...] must hold an IP address")
        return value

    def port_number(self, entry: _Entry, value: str) -> int:
        if re.fullmatch(r"[0-9]+", value):
            if 1 <= int(value) <= 65535:
                return int(value)
            self.bad(entry, f"port {value} is not in the range 1-65535")
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", value):
            try:
                return socket.getservbyname(value, "tcp")
            except OSError:
                self.bad(entry, f"unknown TCP service {value!r} (see /etc/services)")
        self.bad(entry, "expected a port number or a service name")

    def port(self, entry: _Entry) -> int:
        return self.port_number(entry, entry.value)

    def auth(self, entry: _Entry) -> Tuple[str, ...]:
        mechanisms = []
        for word in entry.value.split():
            mechanism = word.upper()
            if mechanism not in _AUTH_MECHANISMS:
                self.bad(
                    entry, f"unsupported mechanism {word} (imapsync supports PLAIN and LOGIN)"
                )
            mechanisms.append(mechanism)
        return tuple(dict.fromkeys(mechanisms))

    def list_reference(self, entry: _Entry) -> bytes:
        return self.wire(entry, entry.value)

    def wire(self, entry: _Entry, name: str) -> bytes:
        try:
            return mailbox_to_wire(name)
        except MailboxNameError as e:
            self.bad(entry, str(e))

    def proxy(self, entry: _Entry) -> ProxySettings:
        try:
            return parse_proxy_url(entry.value)
        except ValueError as e:
            # These messages never quote the password.
            why = str(e).removeprefix("proxy: ")
            self.fail(entry.line, f"invalid proxy in {_where(entry.section)}: {why}")

    def fingerprints(self, entry: _Entry) -> Tuple[str, ...]:
        words = tuple(entry.value.split())
        for word in words:
            try:
                parse_fingerprint(word)
            except TLSConfigError as e:
                self.fail(entry.line, f"{e} in {_where(entry.section)}")
        return words

    def expand(self, entry: _Entry) -> str:
        expanded = _expand_user(entry.value, self.environ)
        if expanded is None:
            self.bad(entry, "no such user")
        return expanded

    def file_path(self, entry: _Entry) -> str:
        # Relative to the working directory, as with interimap; fixed now.
        return os.path.abspath(self.expand(entry))

    def protocols(self, entry: _Entry) -> Tuple[Optional[str], Optional[str]]:
        """interimap's deprecated SSL_protocols, as (SSL_protocol_min, SSL_protocol_max)."""
        include: set[str] = set()
        exclude: set[str] = set()
        for word in entry.value.split():
            name = re.sub(r"\.0$", "", word.lstrip("!"))
            if name not in _PROTOCOLS or word.count("!") > 1:
                self.bad(entry, f"unknown protocol {word} (use {', '.join(_PROTOCOLS)})")
            (exclude if word.startswith("!") else include).add(name)
        enabled = [p for p in _PROTOCOLS if (not include or p in include) and p not in exclude]
        usable = [p for p in enabled if p != "SSLv2"]  # no OpenSSL has it any more
        if not usable:
            self.bad(entry, "this disables every protocol")
        # As OpenSSL: from the lowest enabled version up to the next disabled one.
        low = high = _PROTOCOLS.index(usable[0])
        while high + 1 < len(_PROTOCOLS) and _PROTOCOLS[high + 1] in enabled:
            high += 1
        minimum = None if _PROTOCOLS[low] == "SSLv3" else _PROTOCOLS[low]
        maximum = None if _PROTOCOLS[high] == "TLSv1.3" else _PROTOCOLS[high]
        return minimum, maximum

    def database(self, entry: _Entry) -> str:
        return _database_path(self.expand(entry), self.environ, self.notes)

    def logfile(self, entry: _Entry) -> str:
        path = self.expand(entry)
        if not os.path.isabs(path):
            # interimap takes only absolute paths here.
            self.bad(entry, "must be an absolute path (or start with ~/)")
        return path

    def log_prefix(self, entry: _Entry) -> str:
        problem = _log_prefix_problem(entry.value)
        if problem is not None:
            self.bad(entry, problem)
        return entry.value

    def list_mailbox(self, entry: _Entry) -> Tuple[bytes, ...]:
        value = entry.value
        words: List[bytes] = []
        pos = 0
        while True:
            match = _LIST_WORD.match(value, pos) or _LIST_QUOTED.match(value, pos)
            if match is not None:
                if match.re is _LIST_WORD:
                    words.append(self.wire(entry, match.group()))
                else:
                    words.append(self.wire(entry, self.unquote(entry, match.group(1))))
                pos = match.end()
            space = _SPACES.match(value, pos)
            if space is None:
                break
            pos = space.end()
        if pos != len(value):
            self.bad(
                entry,
                f"unexpected {value[pos]!r} at column {pos + 1} (quote names with spaces,"
                ' brackets or backslashes: "My Folder")',
            )
        return tuple(words)

    def unquote(self, entry: _Entry, quoted: str) -> str:
        # Escapes give bytes; literal characters give their UTF-8.
        data = bytearray()
        pos = 0
        for match in _LIST_ESCAPE.finditer(quoted):
            data += quoted[pos : match.start()].encode("utf-8")
            escape = match.group(1)
            data.append(int(escape[1:], 16) if escape[0] == "x" else _C_ESCAPES[escape])
            pos = match.end()
        data += quoted[pos:].encode("utf-8")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.bad(entry, f'"{quoted}" is not valid UTF-8 once unescaped')

    def list_select_opts(self, entry: _Entry) -> Tuple[bytes, ...]:
        words = entry.value.split()
        for word in words:
            if not _ATOM.fullmatch(word):
                self.bad(entry, f"{word!r} is not an IMAP atom (e.g. SUBSCRIBED)")
        return tuple(word.upper().encode("ascii") for word in words)

    def ignore_mailbox(self, entry: _Entry) -> re.Pattern[bytes]:
        if not entry.value.isascii():
            self.bad(
                entry,
                "must be ASCII: write names as modified UTF-7, as the server sends them"
                " (e.g. Entw&APw-rfe for Entwürfe), escaping '+' as \\+",
            )
        try:
            return re.compile(entry.value.encode("ascii"))
        except re.error as e:
            where = "" if e.pos is None else f" at column {e.pos + 1}"
            self.bad(entry, f"not a regular expression: {e.msg}{where}")
        except (OverflowError, RecursionError, ValueError) as e:
            self.bad(entry, f"not a regular expression: {e}")

    # Assembly

    def side(self, name: str) -> SideConfig:
        if name not in self.headers:
            self.fail(None, f"no [{name}] section (imapsync needs [local] and [remote])")
        entries: Dict[str, _Entry] = {
            key: entry for key, entry in self.sections[_DEFAULT].items() if key in SIDE_KEYS
        }
        entries.update(self.sections[name])

        def get(key: str, default: Any = None) -> Any:
            entry = entries.get(key)
            return default if entry is None else self.values[(entry.section, key)]

        def line_of(key: str) -> int:
            entry = entries.get(key)
            return self.headers[name] if entry is None else entry.line

        kind = get("type", "imaps")
        command = get("command")
        if kind == "tunnel" and command is None:
            self.fail(line_of("type"), f"[{name}] has type=tunnel but no command")
        if kind != "tunnel" and "command" in self.sections[name]:
            self.fail(
                line_of("command"),
                f"command is only for type=tunnel, and [{name}] has type={kind}",
            )
        starttls = get("STARTTLS", True)
        tls: Optional[TLSSettings] = None
        proxy: Optional[ProxySettings] = None
        if kind != "tunnel":
            proxy = get("proxy")
            if kind == "imaps" or starttls:
                tls = self.tls(name, entries, get)
            elif any(key.startswith("SSL_") for key in self.sections[name]):
                self.warnings.append(
                    f"{self.path}: [{name}] has type=imap and STARTTLS=NO: its connection"
                    " is not encrypted and its SSL_* settings are ignored"
                )
        server = ServerSettings(
            name=name,
            type=kind,
            host=get("host", "localhost"),
            port=None if kind == "tunnel" else get("port"),
            command=command if kind == "tunnel" else None,
            starttls=starttls,
            auth=get("auth", _AUTH_MECHANISMS),
            username=get("username"),
            password=get("password"),
            compress=get("compress", name == "remote"),
            null_stderr=get("null-stderr", False),
            tls=tls,
            proxy=None if proxy is None else entries["proxy"].value,
        )
        return SideConfig(server=server, list_reference=get("list-reference", b""), proxy=proxy)

    def tls(self, name: str, entries: Dict[str, _Entry], get: Callable[..., Any]) -> TLSSettings:
        host: str = get("host", "localhost")
        sources = dict(entries)
        minimum, maximum = get("SSL_protocol_min"), get("SSL_protocol_max")
        legacy = entries.get("SSL_protocols")
        if legacy is not None:
            at = f"{self.path} line {legacy.line}"
            if minimum is None and maximum is None:
                minimum, maximum = get("SSL_protocols")
                sources["SSL_protocol_min"] = sources["SSL_protocol_max"] = legacy
                equivalent = " and ".join(
                    f"SSL_protocol_{bound} = {version}"
                    for bound, version in (("min", minimum), ("max", maximum))
                    if version is not None
                )
                advice = f"write {equivalent} instead" if equivalent else "it sets no limit"
                self.warnings.append(f"{at}: SSL_protocols is deprecated; {advice}")
            else:
                self.warnings.append(
                    f"{at}: SSL_protocols is deprecated and ignored for [{name}],"
                    " which sets SSL_protocol_min or SSL_protocol_max"
                )
        settings = TLSSettings(
            hostname=host[1:-1] if host.startswith("[") else host,
            verify=get("SSL_verify", True),
            cafile=get("SSL_CAfile"),
            capath=get("SSL_CApath"),
            sni=get("SSL_hostname"),
            fingerprints=get("SSL_fingerprint", ()),
            protocol_min=minimum,
            protocol_max=maximum,
            cipherlist=get("SSL_cipherlist"),
            ciphersuites=get("SSL_ciphersuites"),
        )
        try:
            # Built now so that a bad TLS setting fails at start-up, not at connect time.
            ClientTLSCreator(settings)
        except TLSConfigError as e:
            message = str(e)
            # The message names the key; the first one named is the culprit.
            named = [(message.find(key), key) for key in _TLS_KEYS if key in message]
            key = min(named)[1] if named else "SSL_hostname"
            culprit = sources.get(key) or sources.get("host")
            if culprit is None:
                self.fail(self.headers[name], f"{message} in [{name}]")
            if culprit.section == name:
                self.fail(culprit.line, f"{message} in [{name}]")
            self.fail(culprit.line, f"{message} (in the default section, used by [{name}])")
        return settings

    def config(self, mode: int) -> Config:
        self.check_values()
        local, remote = self.side("local"), self.side("remote")
        defaults = self.sections[_DEFAULT]

        def get(key: str, default: Any = None) -> Any:
            return self.values[(_DEFAULT, key)] if key in defaults else default

        # interimap: HOST.db with HOST from [remote] (then [local]; but
        # [remote] is required); the host key even for a tunnel.
        database = get("database") or _database_path(
            remote.server.host + ".db", self.environ, self.notes
        )
        secrets = any(
            "password" in section
            or ("proxy" in section and self.values[(name, "proxy")].password is not None)
            for name, section in self.sections.items()
        )
        if secrets and mode & (stat.S_IRGRP | stat.S_IROTH):
            self.warnings.append(
                f"config file {self.path} is readable by others and holds a password;"
                f" chmod 600 {self.path}"
            )
        return Config(
            path=self.path,
            database=database,
            local=local,
            remote=remote,
            logfile=get("logfile"),
            log_prefix=get("log-prefix", DEFAULT_LOG_PREFIX),
            list_mailbox=get("list-mailbox", ()),
            list_select_opts=get("list-select-opts", ()),
            ignore_mailbox=get("ignore-mailbox"),
            warnings=tuple(dict.fromkeys(self.warnings)),
            notes=tuple(dict.fromkeys(self.notes)),
        )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_CHECKS: Dict[str, Callable[[_Loader, _Entry], Any]] = {
    "database": _Loader.database,
    "logfile": _Loader.logfile,
    "log-prefix": _Loader.log_prefix,
    "list-mailbox": _Loader.list_mailbox,
    "list-select-opts": _Loader.list_select_opts,
    "ignore-mailbox": _Loader.ignore_mailbox,
    "type": _Loader.kind,
    "host": _Loader.host,
    "port": _Loader.port,
    "command": _Loader.text,
    "STARTTLS": _Loader.yes_no,
    "auth": _Loader.auth,
    "username": _Loader.text,
    "password": _Loader.text,
    "list-reference": _Loader.list_reference,
    "compress": _Loader.yes_no,
    "null-stderr": _Loader.yes_no,
    "proxy": _Loader.proxy,
    "SSL_fingerprint": _Loader.fingerprints,
    "SSL_verify": _Loader.yes_no,
    "SSL_CAfile": _Loader.file_path,
    "SSL_CApath": _Loader.file_path,
    "SSL_hostname": _Loader.word,
    "SSL_protocol_min": _Loader.word,
    "SSL_protocol_max": _Loader.word,
    "SSL_protocols": _Loader.protocols,
    "SSL_cipherlist": _Loader.word,
    "SSL_ciphersuites": _Loader.word,
}


def _read(path: str) -> Tuple[bytes, int]:
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise ConfigFileMissingError(f"configuration file {path} is not a regular file")
            return f.read(), mode
    except FileNotFoundError:
        raise ConfigFileMissingError(
            f"no configuration file {path}: create it (see imapsync(1)),"
            " or name another one with --config"
        )
    except OSError as e:
        raise ConfigFileMissingError(f"cannot read configuration file {path}: {e.strerror}")


def load_config(path: Optional[str] = None, environ: Mapping[str, str] = os.environ) -> Config:
    """Read and check the configuration file (C{path} as given to --config).

    ConfigFileMissingError if it cannot be read, ConfigError if it is wrong.
    """
    resolved = resolve_config_path(path, environ)
    data, mode = _read(resolved)
    loader = _Loader(resolved, environ)
    loader.parse(data)
    return loader.config(mode)

# -*- test-case-name: tests.test_options -*-
"""The command line, shared by the ``imapsync`` script and ``twistd imapsync``."""

from __future__ import annotations

import getopt
import re
import sys
from typing import FrozenSet, List, Optional, Sequence

from twisted.python import usage

import imapsync
from imapsync.config import mailbox_to_wire
from imapsync.imap.utf7 import MailboxNameError

__all__ = ["COMMANDS", "DEFAULT_WATCH", "DEFAULT_NOTIFY_WATCH", "TARGETS", "Options"]

COMMANDS = ("repair", "delete", "rename")
TARGETS: FrozenSet[str] = frozenset({"local", "remote", "database"})
# interimap's --watch defaults: seconds between polls, or with --notify,
# idle seconds before a NOOP.
DEFAULT_WATCH = 60
DEFAULT_NOTIFY_WATCH = 900

_FORMS = (
    "[OPTION...] [MAILBOX...]",
    "[OPTION...] --repair [MAILBOX...]",
    "[OPTION...] --delete MAILBOX...",
    "[OPTION...] --rename SOURCE DEST",
)


def _optional_watch_value(arguments: Sequence[str]) -> List[str]:
    """Give a bare ``--watch`` its value as interimap's Getopt::Long ``watch:i``
    does: the next argument if it is a number, else the default (getopt
    has no optional values)."""
    out: List[str] = []
    i = 0
    while i < len(arguments):
        argument = arguments[i]
        if argument == "--":
            out.extend(arguments[i:])
            break
        if argument == "--watch":
            following = arguments[i + 1] if i + 1 < len(arguments) else ""
            if re.fullmatch(r"[0-9]+", following):
                out.append("--watch=" + following)
                i += 2
                continue
            argument = "--watch="
        out.append(argument)
        i += 1
    return out


class Options(usage.Options):
    """imapsync's options.

    After parsing: ``command`` ("sync", "repair", "delete" or "rename");
    ``oneshot`` (true for every command); ``watch`` (seconds, or None when
    neither --watch nor --notify is given); ``notify``; ``debug`` (how many
    times --debug was given); ``quiet``; ``targets``; ``config_path`` (as
    given, or None); ``mailbox_names`` (str) and ``mailboxes`` (the same
    in wire form: modified UTF-7 bytes).
    """

    longdesc = (
        "Keep the mailboxes of two IMAP servers in sync, both ways, using QRESYNC."
        " Without --oneshot, imapsync stays connected after the first sync and follows"
        " changes (NOTIFY). MAILBOX arguments limit the sync to these mailboxes or LIST"
        " patterns (* and %), named with the local hierarchy delimiter; non-ASCII names"
        " may be given as text or in modified UTF-7. --repair compares every UID and flag"
        " on both sides and fixes the database; --delete and --rename act on both"
        " servers and the database, or on the --target ones. The"
        " configuration file is $XDG_CONFIG_HOME/imapsync/config (or"
        " ~/.config/imapsync/config), an interimap-compatible INI file. Exit status: 0"
        " success, 1 error, 2 no configuration file or database, 64 usage error, 75"
        " temporary failure in watch mode, 78 configuration error. See imapsync(1)."
    )

    optFlags = [
        ["oneshot", "1", "Sync once and exit instead of following changes."],
        [
            "repair",
            None,
            "Full sync of the given (or all known) mailboxes: compare every UID and flag"
            " on both sides, fix the database, copy what is unmapped.",
        ],
        [
            "delete",
            None,
            "Delete each MAILBOX on each target (not recursive; INBOX is refused).",
        ],
        [
            "rename",
            None,
            "Rename mailbox SOURCE to DEST on each target (recursive; refused if DEST exists).",
        ],
        [
            "notify",
            None,
            "Watch mode with NOTIFY, for interimap compatibility: send NOOP after --watch"
            f" (default {DEFAULT_NOTIFY_WATCH}) idle seconds.",
        ],
        ["quiet", "q", "Log warnings and errors only."],
    ]
    optParameters = [
        [
            "config",
            "c",
            None,
            "Configuration FILE (default: $XDG_CONFIG_HOME/imapsync/config);"
            " a relative path starts from $XDG_CONFIG_HOME (or ~/.config).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["debug"] = 0
        self["target"] = []
        self["watch"] = None
        self.command = "sync"
        self.oneshot = False
        self.watch: Optional[int] = None
        self.notify = False
        self.debug = 0
        self.quiet = False
        self.targets: FrozenSet[str] = TARGETS
        self.config_path: Optional[str] = None
        self.mailbox_names: List[str] = []
        self.mailboxes: List[bytes] = []

    def parseOptions(self, options: Optional[Sequence[str]] = None) -> None:
        if options is None:
            options = sys.argv[1:]
        arguments = self._permute(_optional_watch_value(options))
        super().parseOptions(arguments)  # type: ignore[no-untyped-call]

    def _permute(self, arguments: List[str]) -> List[str]:
        """Options first, then ``--`` and the mailboxes.

        getopt (used by twisted.python.usage) stops at the first mailbox,
        so ``--delete Old --target=local`` would take ``--target=local`` for
        a mailbox; interimap, like GNU tools, accepts options anywhere.
        """
        try:
            found, rest = getopt.gnu_getopt(arguments, self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e))
        ordered: List[str] = []
        for name, value in found:
            if name.startswith("--"):
                takes_value = name[2:] + "=" in self.longOpt
                ordered.append(f"{name}={value}" if takes_value else name)
            else:
                ordered.append(name)
                if name[1:] + ":" in self.shortOpt:
                    ordered.append(value)
        return ordered + ["--"] + rest

    def getSynopsis(self) -> str:
        if self.parent is None:
            return "Usage: " + "\n  or: ".join(f"imapsync {form}" for form in _FORMS)
        assert self.parent.subCommand is not None
        program = f"{self.parent.getSynopsis()} {self.parent.subCommand}"
        return "\n  or: ".join(f"{program} {form}" for form in _FORMS)

    def opt_debug(self) -> None:
        """Log IMAP traffic (no message bodies); credentials only if given twice."""
        self["debug"] += 1

    def opt_target(self, targets: str) -> None:
        """Where --delete or --rename acts: local, remote and/or database
        (comma-separated, repeatable; default: all three)."""
        for target in targets.split(","):
            if target not in TARGETS:
                raise usage.UsageError(
                    f"invalid --target {target!r}: use local, remote and/or database"
                )
            self["target"].append(target)

    def opt_watch(self, seconds: str) -> None:
        """Keep syncing: poll a side without NOTIFY every SECONDS (default 60)."""
        if not re.fullmatch(r"[0-9]+", seconds or "0"):
            raise usage.UsageError(f"--watch takes a number of seconds, not {seconds!r}")
        # 0 means the default, as with interimap.
        self["watch"] = int(seconds or "0")

    def opt_version(self) -> None:
        """Show the version and exit."""
        print(f"imapsync {imapsync.__version__}")
        sys.exit(0)

    opt_h = usage.Options.opt_help

    def parseArgs(self, *mailboxes: str) -> None:
        self.mailbox_names = list(mailboxes)

    def postOptions(self) -> None:
        commands = [command for command in COMMANDS if self[command]]
        if len(commands) > 1:
            raise usage.UsageError(
                f"--{commands[0]} and --{commands[1]} cannot be combined: one command at most"
            )
        command = commands[0] if commands else "sync"
        names = ["INBOX" if name.upper() == "INBOX" else name for name in self.mailbox_names]
        if command == "delete" and not names:
            raise usage.UsageError("--delete needs the MAILBOX names to delete")
        if command == "delete" and "INBOX" in names:
            # Refused before anything is opened, not after connecting.
            raise usage.UsageError("INBOX cannot be deleted (RFC 3501 6.3.4)")
        if command == "rename" and len(names) != 2:
            raise usage.UsageError(
                f"--rename needs exactly two arguments, SOURCE and DEST (got {len(names)})"
            )
        watching = self["watch"] is not None or bool(self["notify"])
        if command != "sync" and watching:
            raise usage.UsageError(
                f"--{command} runs once and exits: it cannot be combined with --watch or --notify"
            )
        if self["oneshot"] and watching:
            raise usage.UsageError("--oneshot cannot be combined with --watch or --notify")
        if self["target"] and command not in ("delete", "rename"):
            raise usage.UsageError("--target only applies to --delete and --rename")
        mailboxes = []
        for name in names:
            if not name:
                raise usage.UsageError("empty mailbox name")
            if "\0" in name:
                raise usage.UsageError(f"invalid mailbox name {name!r}")
            if command in ("delete", "rename") and ("*" in name or "%" in name):
                raise usage.UsageError(
                    f"--{command} takes mailbox names, not LIST patterns: {name!r}"
                )
            try:
                mailboxes.append(mailbox_to_wire(name))
            except MailboxNameError:
                raise usage.UsageError(
                    f"mailbox name {name!r} cannot be encoded (is it valid in your locale?)"
                )

        self.command = command
        self.oneshot = command != "sync" or bool(self["oneshot"])
        self.notify = bool(self["notify"])
        if watching:
            self.watch = self["watch"] or (DEFAULT_NOTIFY_WATCH if self.notify else DEFAULT_WATCH)
        self.debug = self["debug"]
        self.quiet = bool(self["quiet"])
        self.targets = frozenset(self["target"]) or TARGETS
        self.config_path = self["config"]
        self.mailbox_names = names
        self.mailboxes = mailboxes

# -*- test-case-name: tests.test_options -*-
"""Tests for imapsync.options: the command line of ``imapsync`` and
``twistd imapsync``."""

from __future__ import annotations

import io
import sys
from typing import List

from hypothesis import given
from hypothesis import strategies as st
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

import imapsync
from imapsync.options import TARGETS, Options


def parse(*arguments: str) -> Options:
    options = Options()
    options.parseOptions(list(arguments))
    return options


class DefaultsTests(SynchronousTestCase):
    def test_no_arguments(self) -> None:
        """Sync everything, then follow changes."""
        options = parse()
        self.assertEqual(options.command, "sync")
        self.assertFalse(options.oneshot)
        self.assertIsNone(options.watch)
        self.assertFalse(options.notify)
        self.assertEqual(options.debug, 0)
        self.assertFalse(options.quiet)
        self.assertEqual(options.targets, frozenset({"local", "remote", "database"}))
        self.assertEqual(options.targets, TARGETS)
        self.assertIsNone(options.config_path)
        self.assertEqual((options.mailbox_names, options.mailboxes), ([], []))

    def test_flags(self) -> None:
        options = parse("-1", "-q", "--debug", "--debug", "-c", "work")
        self.assertTrue(options.oneshot)
        self.assertTrue(options.quiet)
        self.assertEqual(options.debug, 2)
        self.assertEqual(options.config_path, "work")
        options = parse("--oneshot", "--quiet", "--debug", "--config=/etc/imapsync.conf")
        self.assertEqual(
            (options.oneshot, options.quiet, options.debug, options.config_path),
            (True, True, 1, "/etc/imapsync.conf"),
        )

    def test_bundled_short_options(self) -> None:
        options = parse("-1qc", "work")
        self.assertEqual(
            (options.oneshot, options.quiet, options.config_path), (True, True, "work")
        )

    def test_unknown_option(self) -> None:
        self.assertRaises(usage.UsageError, parse, "--frobnicate")
        self.assertRaises(usage.UsageError, parse, "--config")


class MailboxArgumentTests(SynchronousTestCase):
    def test_names(self) -> None:
        """As text or modified UTF-7; INBOX in any case is INBOX."""
        options = parse("inbox", "Entwürfe", "Entw&APw-rfe", "Tom&Jerry", "Work/*")
        self.assertEqual(
            options.mailbox_names, ["INBOX", "Entwürfe", "Entw&APw-rfe", "Tom&Jerry", "Work/*"]
        )
        self.assertEqual(
            options.mailboxes,
            [b"INBOX", b"Entw&APw-rfe", b"Entw&APw-rfe", b"Tom&-Jerry", b"Work/*"],
        )
        self.assertEqual(parse("--", "-1").mailboxes, [b"-1"])

    def test_undecodable(self) -> None:
        """A name that was not valid in the locale (surrogate-escaped by Python)."""
        error = self.assertRaises(usage.UsageError, parse, "caf\udce9")
        self.assertIn("cannot be encoded", str(error))

    def test_empty(self) -> None:
        self.assertRaises(usage.UsageError, parse, "")

    @given(
        st.lists(
            st.text(
                st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1
            ),
            max_size=4,
        )
    )
    def test_any_text(self, names: List[str]) -> None:
        """Every name that is text gives one wire name, in order."""
        options = parse(*["--"] + names)
        self.assertEqual(len(options.mailboxes), len(names))
        for wire in options.mailboxes:
            self.assertTrue(wire.isascii())


class CommandTests(SynchronousTestCase):
    def test_repair(self) -> None:
        options = parse("--repair")
        self.assertEqual((options.command, options.oneshot), ("repair", True))
        options = parse("--repair", "INBOX", "Archive")
        self.assertEqual(options.mailboxes, [b"INBOX", b"Archive"])

    def test_delete(self) -> None:
        options = parse("--delete", "Old", "Entwürfe")
        self.assertEqual((options.command, options.oneshot), ("delete", True))
        self.assertEqual(options.mailboxes, [b"Old", b"Entw&APw-rfe"])
        error = self.assertRaises(usage.UsageError, parse, "--delete")
        self.assertIn("--delete needs", str(error))
        for inbox in ("INBOX", "inbox"):
            error = self.assertRaises(usage.UsageError, parse, "--delete", "Old", inbox)
            self.assertIn("INBOX cannot be deleted", str(error))

    def test_rename(self) -> None:
        options = parse("--rename", "Old", "New")
        self.assertEqual((options.command, options.mailboxes), ("rename", [b"Old", b"New"]))
        for arguments in [(), ("Old",), ("A", "B", "C")]:
            with self.subTest(arguments=arguments):
                error = self.assertRaises(usage.UsageError, parse, "--rename", *arguments)
                self.assertIn("exactly two arguments, SOURCE and DEST", str(error))

    def test_no_patterns(self) -> None:
        """--delete and --rename take names; * and % would be LIST patterns."""
        self.assertRaises(usage.UsageError, parse, "--delete", "Trash/*")
        self.assertRaises(usage.UsageError, parse, "--rename", "A%", "B")

    def test_one_command(self) -> None:
        error = self.assertRaises(usage.UsageError, parse, "--repair", "--delete", "X")
        self.assertIn("--repair and --delete cannot be combined", str(error))
        self.assertRaises(usage.UsageError, parse, "--delete", "--rename", "A", "B")

    def test_commands_run_once(self) -> None:
        """A command with watch mode is a usage error; --oneshot is fine."""
        for watch in ["--watch=60", "--notify"]:
            with self.subTest(watch=watch):
                error = self.assertRaises(usage.UsageError, parse, "--repair", watch)
                self.assertIn("--repair runs once and exits", str(error))
        self.assertEqual(parse("--repair", "-1").command, "repair")

    def test_targets(self) -> None:
        options = parse("--delete", "--target=local,database", "X")
        self.assertEqual(options.targets, frozenset({"local", "database"}))
        options = parse("--rename", "--target", "remote", "--target=database", "A", "B")
        self.assertEqual(options.targets, frozenset({"remote", "database"}))
        self.assertEqual(parse("--delete", "X").targets, TARGETS)
        for value in ["imap", "local,", "Local"]:
            with self.subTest(value=value):
                error = self.assertRaises(
                    usage.UsageError, parse, "--delete", "--target", value, "X"
                )
                self.assertIn("use local, remote and/or database", str(error))

    def test_target_needs_delete_or_rename(self) -> None:
        for arguments in [("--target=local",), ("--repair", "--target=local")]:
            with self.subTest(arguments=arguments):
                error = self.assertRaises(usage.UsageError, parse, *arguments)
                self.assertIn("--target only applies to --delete and --rename", str(error))


class WatchTests(SynchronousTestCase):
    def test_watch(self) -> None:
        options = parse("--watch=30")
        self.assertEqual((options.watch, options.oneshot, options.notify), (30, False, False))
        self.assertEqual(parse("--watch", "45").watch, 45)

    def test_optional_value(self) -> None:
        """As interimap's --watch[=seconds]: 60, or 900 with --notify."""
        self.assertEqual(parse("--watch").watch, 60)
        self.assertEqual(parse("--watch=0").watch, 60)
        options = parse("--watch", "INBOX")
        self.assertEqual((options.watch, options.mailboxes), (60, [b"INBOX"]))
        options = parse("--notify")
        self.assertEqual((options.watch, options.notify), (900, True))
        self.assertEqual(parse("--watch", "--notify").watch, 900)
        self.assertEqual(parse("--notify", "--watch=120").watch, 120)
        self.assertEqual(parse("--", "--watch").mailbox_names, ["--watch"])

    def test_bad_values(self) -> None:
        for value in ["-5", "abc", "1.5"]:
            with self.subTest(value=value):
                error = self.assertRaises(usage.UsageError, parse, f"--watch={value}")
                self.assertIn("number of seconds", str(error))

    def test_not_with_oneshot(self) -> None:
        for arguments in [("-1", "--watch=60"), ("--oneshot", "--notify")]:
            with self.subTest(arguments=arguments):
                error = self.assertRaises(usage.UsageError, parse, *arguments)
                self.assertIn("--oneshot cannot be combined", str(error))


class OutputTests(SynchronousTestCase):
    def run_and_capture(self, *arguments: str) -> str:
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        error = self.assertRaises(SystemExit, parse, *arguments)
        self.assertIn(error.code, (0, None))
        return stdout.getvalue()

    def test_version(self) -> None:
        self.assertEqual(self.run_and_capture("--version"), f"imapsync {imapsync.__version__}\n")

    def test_help(self) -> None:
        for flag in ["--help", "-h"]:
            with self.subTest(flag=flag):
                text = self.run_and_capture(flag)
                self.assertTrue(text.startswith("Usage: imapsync [OPTION...] [MAILBOX...]\n"))
                for fragment in [
                    "  or: imapsync [OPTION...] --rename SOURCE DEST",
                    "-1, --oneshot",
                    "-c, --config=",
                    "--target=",
                    "--watch=",
                    "-h, --help",
                    "imapsync(1)",
                ]:
                    self.assertIn(fragment, text)

    def test_under_twistd(self) -> None:
        """As a twistd plugin's options: twistd passes what follows the
        plugin name, and the synopsis names both."""

        class Twistd(usage.Options):
            synopsis = "Usage: twistd [options]"
            subCommands = [["imapsync", None, Options, "IMAP sync"]]

        twistd = Twistd()
        twistd.parseOptions(["imapsync", "-1", "--debug", "INBOX"])
        options = twistd.subOptions
        assert isinstance(options, Options)
        self.assertEqual(
            (options.oneshot, options.debug, options.mailboxes), (True, 1, [b"INBOX"])
        )
        self.assertTrue(
            options.getSynopsis().startswith("Usage: twistd [options] imapsync [OPTION...]")
        )

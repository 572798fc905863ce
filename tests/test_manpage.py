# -*- test-case-name: tests.test_manpage -*-
"""The manual page, doc/imapsync.1, against the code: the options of
``--help``, the configuration keys, the exit statuses, and a groff run
without warnings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Dict, List, Set

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from imapsync import config
from imapsync.options import Options
from imapsync.scripts import main

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANPAGE = os.path.join(REPOSITORY, "doc", "imapsync.1")

# One roff escape: a font change, a special character, or an escaped character.
_ESCAPE = re.compile(r"\\(f(?:\[[^\]]*\]|\(..|.)|\(..|\[[^\]]*\]|.)")
_ESCAPED = {"-": "-", "e": "\\", "&": "", "~": " ", " ": " ", "|": "", "^": ""}
_LONG_OPTION = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")
_SHORT_OPTION = re.compile(r"(?<![\w-])-([A-Za-z0-9])(?![\w-])")
_WORD = re.compile(r"[A-Za-z][\w-]*")


def _unescape(match: re.Match[str]) -> str:
    escape = match.group(1)
    if escape.startswith(("f", "(", "[")):
        return ""
    return _ESCAPED.get(escape, escape)


def plain(line: str) -> str:
    """A roff line as the reader sees it: no macro name, quotes, fonts or escapes."""
    if line.startswith("."):
        line = line.split(None, 1)[1] if " " in line else ""
        line = line.replace('"', "")
    return _ESCAPE.sub(_unescape, line)


def read_manpage() -> str:
    with open(MANPAGE, "rb") as f:
        return f.read().decode("utf-8")


def sections(text: str) -> Dict[str, List[str]]:
    """The lines of each ``.SH`` section, by title."""
    found: Dict[str, List[str]] = {}
    current: List[str] = found.setdefault("", [])
    for line in text.splitlines():
        if line.startswith(".SH"):
            current = found.setdefault(plain(line).strip(), [])
        else:
            current.append(line)
    return found


def subsections(lines: List[str]) -> Dict[str, List[str]]:
    """The lines of each ``.SS`` subsection, by title ("" before the first)."""
    found: Dict[str, List[str]] = {}
    current: List[str] = found.setdefault("", [])
    for line in lines:
        if line.startswith(".SS"):
            current = found.setdefault(plain(line).strip(), [])
        else:
            current.append(line)
    return found


def tags(lines: List[str]) -> List[str]:
    """The tags of the ``.TP`` paragraphs (the item names), as plain text."""
    return [plain(lines[i + 1]) for i, line in enumerate(lines[:-1]) if line.startswith(".TP")]


def ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


class ManpageTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.text = read_manpage()
        self.sections = sections(self.text)
        for title in ("SYNOPSIS", "OPTIONS", "CONFIGURATION FILE", "EXIT STATUS"):
            self.assertIn(title, self.sections, f"no {title} section in {MANPAGE}")


class OptionsTests(ManpageTestCase):
    """The OPTIONS section documents exactly the options of ``--help``."""

    def documented(self, pattern: re.Pattern[str]) -> Set[str]:
        return {name for tag in tags(self.sections["OPTIONS"]) for name in pattern.findall(tag)}

    def test_every_long_option_documented(self) -> None:
        options = {name.rstrip("=") for name in Options().longOpt}
        missing = options - self.documented(_LONG_OPTION)
        self.assertEqual(missing, set(), "options of --help missing from OPTIONS")

    def test_every_short_option_documented(self) -> None:
        options = set(Options().shortOpt.replace(":", ""))
        self.assertEqual(options, self.documented(_SHORT_OPTION))

    def test_every_documented_option_exists(self) -> None:
        """Wherever the page names an imapsync option, it is a real one
        (examples of other commands, such as systemctl, excepted)."""
        options = {name.rstrip("=") for name in Options().longOpt}
        unknown = {}
        example = False
        for number, line in enumerate(self.text.splitlines(), start=1):
            if line.startswith((".EX", ".EE")):
                example = line.startswith(".EX")
                continue
            text = plain(line)
            if example and not text.startswith("imapsync "):
                continue
            for name in _LONG_OPTION.findall(text):
                if name not in options:
                    unknown[f"--{name}"] = number
        self.assertEqual(unknown, {}, "options in the manual that --help does not know (line)")

    def test_synopsis_forms(self) -> None:
        """SYNOPSIS shows the forms of ``--help``'s usage line."""
        forms: List[List[str]] = [[]]
        for line in self.sections["SYNOPSIS"]:
            if line.strip() == ".br":
                forms.append([])
            else:
                forms[-1].append(plain(line))
        shown = {" ".join(" ".join(form).split()) for form in forms}
        usage = Options().getSynopsis().splitlines()
        self.assertEqual(shown, {re.sub(r"^\s*(Usage|or):\s*", "", form) for form in usage})


class ConfigurationTests(ManpageTestCase):
    """CONFIGURATION FILE documents exactly the keys imapsync.config accepts."""

    def keys(self, lines: List[str]) -> Set[str]:
        return {word for tag in tags(lines) for word in _WORD.findall(tag)}

    def test_every_key_documented(self) -> None:
        accepted = set(config.GLOBAL_KEYS) | set(config.SIDE_KEYS) | set(config.ALIASES)
        documented = self.keys(self.sections["CONFIGURATION FILE"])
        self.assertEqual(accepted - documented, set(), "keys missing from the manual")
        self.assertEqual(documented - accepted, set(), "keys in the manual, unknown to config")

    def test_global_keys(self) -> None:
        """The keys only allowed in the default section are documented as such."""
        parts = subsections(self.sections["CONFIGURATION FILE"])
        self.assertEqual(self.keys(parts.pop("Global keys")), set(config.GLOBAL_KEYS))
        for title, lines in parts.items():
            self.assertEqual(self.keys(lines) & set(config.GLOBAL_KEYS), set(), title)

    def test_aliases_beside_their_key(self) -> None:
        """The original manual's spelling is given with the key it stands for."""
        entries = [set(_WORD.findall(tag)) for tag in tags(self.sections["CONFIGURATION FILE"])]
        for alias, key in config.ALIASES.items():
            self.assertIn({alias, key}, [entry & {alias, key} for entry in entries])


class ExitStatusTests(ManpageTestCase):
    """EXIT STATUS lists exactly the statuses the command returns."""

    def statuses(self) -> Set[int]:
        return {
            value
            for name, value in vars(main).items()
            if name.startswith("EXIT_") and isinstance(value, int)
        }

    def test_every_status_documented(self) -> None:
        documented = {int(tag) for tag in tags(self.sections["EXIT STATUS"])}
        self.assertEqual(documented, self.statuses())

    def test_config_errors(self) -> None:
        for error in (config.ConfigError, config.ConfigFileMissingError):
            self.assertIn(error.exit_code, self.statuses())

    def test_help_agrees(self) -> None:
        """The statuses summed up at the end of ``--help``."""
        summary = Options.longdesc.split("Exit status:", 1)[1].split(".", 1)[0]
        self.assertEqual({int(n) for n in re.findall(r"\b\d+\b", summary)}, self.statuses())


class RenderingTests(SynchronousTestCase):
    def test_ascii(self) -> None:
        """Special characters are written as roff escapes, which every device renders."""
        with open(MANPAGE, "rb") as f:
            data = f.read()
        for number, line in enumerate(data.splitlines(), start=1):
            self.assertTrue(line.isascii(), f"{MANPAGE} line {number} is not ASCII: {line!r}")

    def test_groff_warnings(self) -> None:
        """``groff -man -ww -z`` renders the page without a warning."""
        groff = shutil.which("groff")
        if groff is None:
            message = "groff is missing (Debian package groff-base; make check installs it)"
            if ci():
                self.fail(message + " (required: CI is set)")
            raise SkipTest(message)
        result = subprocess.run(
            [groff, "-man", "-ww", "-z", MANPAGE],
            capture_output=True,
            env=dict(os.environ, LC_ALL="C.UTF-8"),
            check=False,
        )
        self.assertEqual(
            (result.returncode, result.stderr.decode("utf-8", "replace")),
            (0, ""),
            "groff warnings",
        )

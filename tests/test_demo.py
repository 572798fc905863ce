# -*- test-case-name: tests.test_demo -*-
"""`make demo`'s script, run end to end as the user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.dovecot import require_dovecot

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DemoTests(SynchronousTestCase):
    def test_demo(self) -> None:
        """The demo syncs both ways three times, finds the stores identical
        after each run, and removes its temporary directory."""
        require_dovecot(self)
        tmp = tempfile.mkdtemp(prefix="imapsync-test-demo-")
        self.addCleanup(shutil.rmtree, tmp, True)
        process = subprocess.run(
            [sys.executable, os.path.join(REPOSITORY, "demo", "run.py")],
            cwd=REPOSITORY,
            env=dict(os.environ, TMPDIR=tmp),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
        stdout = process.stdout.decode("utf-8", "replace")
        stderr = process.stderr.decode("utf-8", "replace")
        report = f"exit {process.returncode}\n--- stdout\n{stdout}--- stderr\n{stderr}---"
        self.assertEqual(process.returncode, 0, report)
        self.assertNotIn("Traceback", stdout + stderr, report)
        self.assertIn("stores identical: yes (after each of the 3 runs)", stdout, report)
        self.assertIn("WARNING: Conflicting flag update in INBOX", stdout, report)
        self.assertEqual(os.listdir(tmp), [], report)

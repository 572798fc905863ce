"""``python -m imapsync``: the same as the ``imapsync`` command."""

from imapsync.scripts.main import run

run()

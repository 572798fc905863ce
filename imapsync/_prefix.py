# -*- test-case-name: tests.test_output -*-
"""The ``server(mailbox): `` prefix carried inside log messages.

Events with a ``server`` field put ``{prefix}`` at the start of their
format, so any log observer (twistd's included) shows which server and
mailbox a line is about; `imapsync.output` replaces it with the
configured ``log-prefix``.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger, LogLevel


def default_prefix(server: Optional[str], mailbox: Optional[str]) -> str:
    """interimap's default ``log-prefix``, ``%?n?%?m?%n(%m)&%n?: ?``."""
    if server and mailbox:
        return f"{server}({mailbox}): "
    if server:
        return f"{server}: "
    return ""


class PrefixLogger(Logger):
    """A Logger that fills in ``prefix`` from the ``server``/``mailbox`` fields."""

    def emit(self, level: LogLevel, format: Optional[str] = None, **kwargs: Any) -> None:
        if "prefix" not in kwargs:
            mailbox = kwargs.get("mailbox")
            kwargs["prefix"] = default_prefix(kwargs.get("server"), mailbox)
        super().emit(level, format, **kwargs)

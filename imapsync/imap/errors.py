# -*- test-case-name: tests.test_imap_protocol -*-
"""Typed errors raised by the IMAP client."""

from __future__ import annotations

from typing import Optional


class IMAPError(Exception):
    """Base class of every error the IMAP client raises.

    ``server`` names the side whose connection raised it ("local",
    "remote"), once the protocol or the session has set it, so that error
    messages can say which server was wrong.
    """

    server: Optional[str] = None


class ProtocolError(IMAPError):
    """The server sent something that is not valid IMAP (or that we refuse)."""


class NoResponse(IMAPError):
    """A command completed with a tagged NO."""

    def __init__(self, command: bytes, code: Optional[object], text: str) -> None:
        super().__init__(command, code, text)
        self.command = command
        self.code = code
        self.text = text

    def __str__(self) -> str:
        return "{} refused: {}".format(self.command.decode("ascii", "replace"), self.text)


class BadResponse(NoResponse):
    """A command completed with a tagged BAD."""

    def __str__(self) -> str:
        return "{} rejected as invalid (BAD): {}".format(
            self.command.decode("ascii", "replace"), self.text
        )


class ByeResponse(IMAPError):
    """The server closed the session with an untagged BYE."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"server said BYE: {self.text}"


class ConnectionLostError(IMAPError):
    """The connection closed while commands were pending."""


class CommandTimeoutError(IMAPError):
    """The server did not answer within the allotted time."""


class CapabilityMissingError(IMAPError):
    """The server lacks a capability we need."""

    def __init__(self, capability: str, purpose: str = "", server: str = "") -> None:
        super().__init__(capability, purpose, server)
        self.capability = capability
        self.purpose = purpose
        self.server = server

    def __str__(self) -> str:
        suffix = f" ({self.purpose})" if self.purpose else ""
        who = f"the {self.server} server" if self.server else "the server"
        return f"{who} does not advertise the {self.capability} capability{suffix}"


class AuthenticationError(IMAPError):
    """Authentication failed or no usable mechanism was found."""


class TLSVerificationError(IMAPError):
    """The server's certificate or key failed a configured check."""


class FingerprintMismatchError(TLSVerificationError):
    """The server's key matches none of the pinned fingerprints."""

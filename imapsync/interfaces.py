# -*- test-case-name: tests.test_imap_session -*-
"""Interfaces at the seams that tests replace with in-memory fakes."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface


class IIMAPSession(Interface):
    """An authenticated IMAP connection (`imapsync.imap.session.IMAPSession`).

    Every method returns a Deferred; mailbox names are wire ``bytes``.
    """

    name = Attribute("'local' or 'remote', for messages")
    capabilities = Attribute("frozenset of upper-cased capability names")
    selected = Attribute("the SelectedMailbox state, or None")

    def has_capability(capability: bytes) -> bool:
        """Whether the server advertises ``capability``."""

    def require(capabilities: Iterable[bytes], purpose: str = "") -> None:
        """Raise CapabilityMissingError naming the first missing capability."""

    def add_observer(observer: Callable[[Any], None]) -> None:
        """Call ``observer`` with each unsolicited response."""

    def remove_observer(observer: Callable[[Any], None]) -> None:
        """Stop calling ``observer``."""

    def when_lost() -> Deferred[BaseException]:
        """A fresh Deferred firing with the error once the connection is gone."""

    def when_closed() -> Deferred[None]:
        """A fresh Deferred firing once the connection is closed (tunnel exited)."""

    def take_changes() -> Any:
        """Unsolicited vanished UIDs and flag updates of the selected mailbox."""

    def capability() -> Deferred[frozenset[bytes]]:
        """Re-read the capabilities."""

    def noop() -> Deferred[None]:
        """NOOP."""

    def id(params: Optional[Mapping[bytes, bytes]] = None) -> Deferred[Dict[bytes, bytes]]:
        """ID: send ours, return the server's."""

    def enable(*capabilities: bytes) -> Deferred[frozenset[bytes]]:
        """ENABLE; return the enabled set."""

    def logout() -> Deferred[None]:
        """LOGOUT and disconnect."""

    def list_extended(
        patterns: Sequence[bytes] = (b"*",),
        reference: bytes = b"",
        selection: Sequence[bytes] = (),
        subscribed: bool = True,
        status: Sequence[bytes] = (),
    ) -> Deferred[Any]:
        """LIST-EXTENDED with RETURN (SUBSCRIBED STATUS (...)): list of MailboxInfo."""

    def status(mailbox: bytes, items: Sequence[bytes]) -> Deferred[Dict[bytes, int]]:
        """STATUS: dict of item -> int."""

    def create(mailbox: bytes) -> Deferred[None]:
        """CREATE."""

    def delete(mailbox: bytes) -> Deferred[None]:
        """DELETE."""

    def rename(old: bytes, new: bytes) -> Deferred[None]:
        """RENAME."""

    def subscribe(mailbox: bytes) -> Deferred[None]:
        """SUBSCRIBE."""

    def unsubscribe(mailbox: bytes) -> Deferred[None]:
        """UNSUBSCRIBE."""

    def select_qresync(
        mailbox: bytes,
        uidvalidity: Optional[int] = None,
        modseq: Optional[int] = None,
        known_uids: Any = None,
        readonly: bool = False,
    ) -> Deferred[Any]:
        """SELECT with QRESYNC parameters: a SelectResult."""

    def unselect() -> Deferred[None]:
        """UNSELECT."""

    def fetch_changes(
        changedsince: int, uids: Any = b"1:*", vanished: bool = True
    ) -> Deferred[Any]:
        """Changes (vanished, flag updates) since a MODSEQ."""

    def fetch_flags(uids: Any) -> Deferred[Any]:
        """UID -> (MODSEQ, flags)."""

    def fetch_messages(uids: Any, sink: Callable[[Any], Any]) -> Deferred[int]:
        """Stream messages into ``sink`` (backpressure when it returns a Deferred)."""

    def append(mailbox: bytes, messages: Sequence[Any]) -> Deferred[Any]:
        """APPEND (MULTIAPPEND): an AppendResult."""

    def uid_store(
        uids: Any,
        flags: Iterable[bytes],
        mode: bytes = b"",
        unchangedsince: Optional[int] = None,
        silent: bool = True,
    ) -> Deferred[Any]:
        """UID STORE: a StoreResult."""

    def uid_expunge(uids: Any) -> Deferred[Any]:
        """UID EXPUNGE: the UIDs that vanished."""

    def uid_search(criteria: bytes) -> Deferred[Any]:
        """UID SEARCH: the matching UIDs as a UIDSet."""

    def notify_set(spec: bytes) -> Deferred[None]:
        """NOTIFY SET."""

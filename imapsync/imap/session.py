# -*- test-case-name: tests.test_imap_session -*-
"""The typed, Deferred-returning session API on top of the wire protocol.

`IMAPSession` is what the rest of imapsync talks to (through
`imapsync.interfaces.IIMAPSession`, so engine tests can use a fake).  Every
method builds commands, lets `IMAP4ClientProtocol` pipeline them and turns
the responses into value objects.  Mailbox names are wire ``bytes``.
"""

from __future__ import annotations

import base64
import re
from typing import (
    Awaitable,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsync.imap._protocol import (
    Command,
    CommandResult,
    IMAP4ClientProtocol,
    Literal,
    Part,
    SelectedMailbox,
    record_change,
    without_recent,
)
from imapsync.imap.defer import gather
from imapsync.imap.errors import (
    AuthenticationError,
    CapabilityMissingError,
    IMAPError,
    NoResponse,
    ProtocolError,
)
from imapsync.imap.response import (
    ESearchResponse,
    FetchResponse,
    ListResponse,
    Response,
    StatusResponse,
    UntaggedResponse,
    VanishedResponse,
)
from imapsync.imap.spool import Body
from imapsync.imap.uidset import UIDSet
from imapsync.interfaces import IIMAPSession

T = TypeVar("T")

Flags = Tuple[bytes, ...]

# Capabilities stateful synchronization cannot do without (seed manual).
SYNC_CAPABILITIES = (
    b"IMAP4REV1",
    b"ENABLE",
    b"QRESYNC",
    b"LIST-EXTENDED",
    b"LIST-STATUS",
    b"UIDPLUS",
)

# UID sets are split so that no command line exceeds this many bytes of
# set: servers limit line lengths (Dovecot: 64 KiB), and the pieces are
# pipelined anyway.
MAX_SET_BYTES = 8192

# MULTIAPPEND batches (interimap's figures, measured good on Dovecot): a
# batch is sent once it holds this many messages or bytes.
APPEND_BATCH_MESSAGES = 128
APPEND_BATCH_BYTES = 1024 * 1024

# A valid name that no one uses, EXAMINEd to leave a mailbox on servers
# without UNSELECT (a syntax error, BAD, would leave it selected).
_NO_SUCH_MAILBOX = b"imapsync-no-such-mailbox-8d1c2e7b"

_ATOM_SPECIALS = re.compile(rb'[\x00-\x20\x7f-\xff(){%*"\\]')
_QUOTABLE = re.compile(rb"[\x00\r\n\x80-\xff]")


def astring(value: bytes) -> Part:
    """Encode ``value`` as an atom, a quoted string or a literal."""
    if value and not _ATOM_SPECIALS.search(value) and value.upper() != b"NIL":
        return value
    return quoted(value)


def quoted(value: bytes) -> Part:
    """Encode ``value`` as a string (quoted, or literal when it must be)."""
    if len(value) < 1024 and not _QUOTABLE.search(value):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return Literal(value)


def flag_list(flags: Iterable[bytes]) -> bytes:
    return b"(" + b" ".join(flags) + b")"


@attrs.frozen
class MailboxInfo:
    """One mailbox from LIST-EXTENDED with RETURN (SUBSCRIBED STATUS ...)."""

    name: bytes
    delimiter: Optional[bytes]
    attributes: Tuple[bytes, ...]
    subscribed: bool
    status: Optional[Mapping[bytes, int]]
    extended: Mapping[bytes, object] = attrs.field(factory=dict)

    @property
    def selectable(self) -> bool:
        lowered = {a.lower() for a in self.attributes}
        return not (lowered & {b"\\noselect", b"\\nonexistent"})


@attrs.frozen
class SelectResult:
    """The state of a mailbox just selected, with QRESYNC's changes."""

    mailbox: bytes
    uidvalidity: int
    uidnext: int
    highestmodseq: Optional[int]
    exists: int
    vanished: UIDSet
    changes: Mapping[int, Tuple[int, Flags]]
    readonly: bool = False
    nomodseq: bool = False
    uidnotsticky: bool = False
    permanentflags: Flags = ()


@attrs.frozen
class Changes:
    """Vanished UIDs and flag updates (UID -> (MODSEQ, flags))."""

    vanished: UIDSet
    changes: Mapping[int, Tuple[int, Flags]]


@attrs.frozen
class FetchedMessage:
    """A message as downloaded by `IMAPSession.fetch_messages`."""

    uid: int
    flags: Flags
    internaldate: Optional[bytes]
    body: Body
    modseq: Optional[int] = None


@attrs.frozen
class AppendMessage:
    """A message to APPEND: its body, flags (``\\Recent`` dropped) and date."""

    body: Body
    flags: Flags = ()
    internaldate: Optional[bytes] = None


@attrs.frozen
class AppendResult:
    """``[APPENDUID uidvalidity uids]``: the UIDs given, in append order."""

    uidvalidity: int
    uids: Tuple[int, ...]


@attrs.frozen
class StoreResult:
    """What a UID STORE did.

    ``modified``: messages left alone because they changed since
    UNCHANGEDSINCE; ``modseqs``: the new MODSEQ of each message the server
    reported; ``flags``: their flags, where reported (not with .SILENT).
    """

    modified: UIDSet
    modseqs: Mapping[int, int]
    flags: Mapping[int, Flags]


def _uid_chunks(uids: Union[UIDSet, bytes]) -> List[Tuple[bytes, Optional[UIDSet]]]:
    """Command-sized pieces of ``uids``: (wire form, set; None for a raw b"1:*")."""
    if isinstance(uids, bytes):
        return [(uids, None)]
    return [(chunk.to_bytes(), chunk) for chunk in uids.chunks(MAX_SET_BYTES)]


@implementer(IIMAPSession)
class IMAPSession:
    """An authenticated IMAP connection with a typed API."""

    def __init__(self, protocol: IMAP4ClientProtocol, name: str = "imap") -> None:
        self.protocol = protocol
        self.name = name

    # -- state -----------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[bytes]:
        return self.protocol.capabilities

    @property
    def selected(self) -> Optional[SelectedMailbox]:
        return self.protocol.selected

    def has_capability(self, capability: bytes) -> bool:
        return capability.upper() in self.protocol.capabilities

    def require(self, capabilities: Iterable[bytes], purpose: str = "") -> None:
        """Raise `CapabilityMissingError` naming the first one missing."""
        for capability in capabilities:
            if not self.has_capability(capability):
                raise CapabilityMissingError(capability.decode("ascii"), purpose, self.name)

    def add_observer(self, observer: Callable[[Response], None]) -> None:
        """Call ``observer`` with unsolicited responses (NOTIFY events and the like)."""
        self.protocol.add_observer(observer)

    def remove_observer(self, observer: Callable[[Response], None]) -> None:
        self.protocol.remove_observer(observer)

    def when_lost(self) -> Deferred[BaseException]:
        return self.protocol.when_lost()

    def when_closed(self) -> Deferred[None]:
        return self.protocol.when_closed()

    def take_changes(self) -> Changes:
        """Unsolicited expunges and flag updates of the selected mailbox so far."""
        if self.protocol.selected is None:
            return Changes(UIDSet.from_iterable(()), {})
        vanished, changes = self.protocol.selected.take_changes()
        return Changes(vanished, changes)

    # -- plumbing --------------------------------------------------------

    def _deferred(self, coro: Awaitable[T]) -> Deferred[T]:
        """Run a method's coroutine; the IMAPErrors it fails with name this
        session's server (see `IMAPError.server`)."""

        def name(failure: Failure) -> Failure:
            error = failure.value
            if isinstance(error, IMAPError) and error.server is None:
                error.server = self.name
            return failure

        d: Deferred[T] = Deferred.fromCoroutine(coro)  # type: ignore[arg-type]
        return d.addErrback(name)

    def _send(self, name: bytes, *parts: Part, **kwargs: object) -> Deferred[CommandResult]:
        return self.protocol.send(Command(name, parts, **kwargs))  # type: ignore[arg-type]

    async def _send_all(self, commands: Sequence[Command]) -> List[CommandResult]:
        """Pipeline ``commands``; wait for all, failing with the first error."""
        return await gather(*(self.protocol.send(c) for c in commands))

    # -- connection-level commands --------------------------------------

    def capability(self) -> Deferred[frozenset[bytes]]:
        """Ask the server for its capabilities (after STARTTLS or login)."""

        async def run() -> frozenset[bytes]:
            await self._send(b"CAPABILITY")
            return self.protocol.capabilities

        return self._deferred(run())

    def noop(self) -> Deferred[None]:
        async def run() -> None:
            await self._send(b"NOOP")

        return self._deferred(run())

    def id(self, params: Optional[Mapping[bytes, bytes]] = None) -> Deferred[Dict[bytes, bytes]]:
        """RFC 2971 ID: send ours, return the server's."""

        async def run() -> Dict[bytes, bytes]:
            if params:
                fields: List[bytes] = []
                for field, text in params.items():
                    fields += [_quoted_bytes(field), _quoted_bytes(text)]
                arg = b"(" + b" ".join(fields) + b")"
            else:
                arg = b"NIL"
            result = await self._send(b"ID", arg, collect=(UntaggedResponse,))
            server: Dict[bytes, bytes] = {}
            for response in result.responses:
                if isinstance(response, UntaggedResponse) and response.name == b"ID":
                    values = response.args[0] if response.args else None
                    if isinstance(values, list):
                        for key, value in zip(values[::2], values[1::2], strict=False):
                            if isinstance(key, bytes) and isinstance(value, bytes):
                                server[key] = value
            return server

        return self._deferred(run())

    def enable(self, *capabilities: bytes) -> Deferred[frozenset[bytes]]:
        """ENABLE (RFC 5161); returns what the server enabled."""

        async def run() -> frozenset[bytes]:
            self.require([b"ENABLE"])
            await self._send(b"ENABLE", *capabilities, barrier=True)
            return self.protocol.enabled

        return self._deferred(run())

    def starttls(self, creator: object) -> Deferred[None]:
        """STARTTLS, then the TLS handshake; then the capabilities are re-read."""

        async def run() -> None:
            self.require([b"STARTTLS"], "set STARTTLS=NO to connect without TLS")
            await self._send(
                b"STARTTLS", barrier=True, on_ok=lambda: self.protocol.start_tls(creator)
            )
            self.protocol.capabilities = frozenset()
            await self.capability()

        return self._deferred(run())

    def compress(self) -> Deferred[None]:
        """COMPRESS DEFLATE (RFC 4978)."""

        async def run() -> None:
            self.require([b"COMPRESS=DEFLATE"])
            await self._send(
                b"COMPRESS", b"DEFLATE", barrier=True, on_ok=self.protocol.start_compression
            )

        return self._deferred(run())

    def authenticate(
        self, mechanisms: Sequence[str], username: Optional[str], password: Optional[str]
    ) -> Deferred[str]:
        """Log in with the first of ``mechanisms`` the server offers.

        ``PLAIN`` is AUTHENTICATE PLAIN (with SASL-IR when offered);
        ``LOGIN`` is AUTHENTICATE LOGIN when offered, else the LOGIN command
        unless the server says LOGINDISABLED.  Returns the mechanism used.
        """

        async def run() -> str:
            if username is None or password is None:
                raise AuthenticationError(
                    "the server requires authentication: set username and password"
                )
            user = username.encode("utf-8")
            secret = password.encode("utf-8")
            caps = self.protocol.capabilities
            generation = self.protocol.capability_generation
            for mechanism in (m.upper() for m in mechanisms):
                if mechanism == "PLAIN" and b"AUTH=PLAIN" in caps:
                    await self._authenticate_plain(user, secret)
                elif mechanism == "LOGIN" and b"AUTH=LOGIN" in caps:
                    await self._authenticate_login(user, secret)
                elif mechanism == "LOGIN" and b"LOGINDISABLED" not in caps:
                    await self._login(user, secret)
                else:
                    continue
                if self.protocol.capability_generation == generation:
                    # Capabilities may change after login (RFC 3501 6.2).
                    await self.capability()
                return mechanism
            offered = sorted(
                c.decode("ascii", "replace")[5:] for c in caps if c.startswith(b"AUTH=")
            )
            raise AuthenticationError(
                "no usable authentication mechanism: auth = {} but the server offers {}{}".format(
                    " ".join(mechanisms),
                    " ".join(offered) or "none",
                    " (LOGINDISABLED)" if b"LOGINDISABLED" in caps else "",
                )
            )

        return self._deferred(run())

    async def _authenticate_plain(self, user: bytes, secret: bytes) -> None:
        response = base64.b64encode(b"\0" + user + b"\0" + secret)
        try:
            if self.has_capability(b"SASL-IR"):
                await self._send(b"AUTHENTICATE", b"PLAIN", response, barrier=True, secret=True)
            else:
                await self._send(
                    b"AUTHENTICATE",
                    b"PLAIN",
                    barrier=True,
                    secret=True,
                    on_continuation=lambda _: response,
                )
        except IMAPError as e:
            raise AuthenticationError(f"authentication failed (PLAIN): {e}")

    async def _authenticate_login(self, user: bytes, secret: bytes) -> None:
        answers = [base64.b64encode(user), base64.b64encode(secret)]

        def next_answer(_: bytes) -> bytes:
            return answers.pop(0) if answers else b"*"

        try:
            await self._send(
                b"AUTHENTICATE", b"LOGIN", barrier=True, secret=True, on_continuation=next_answer
            )
        except IMAPError as e:
            raise AuthenticationError(f"authentication failed (LOGIN): {e}")

    async def _login(self, user: bytes, secret: bytes) -> None:
        try:
            await self._send(b"LOGIN", astring(user), astring(secret), barrier=True, secret=True)
        except IMAPError as e:
            raise AuthenticationError(f"authentication failed (LOGIN): {e}")

    def logout(self) -> Deferred[None]:
        """LOGOUT and close the connection; never fails."""

        async def run() -> None:
            try:
                await self._send(b"LOGOUT", barrier=True)
            except IMAPError:
                pass
            transport = self.protocol.transport
            if transport is not None:
                transport.loseConnection()

        return self._deferred(run())

    # -- mailboxes -------------------------------------------------------

    def list_extended(
        self,
        patterns: Sequence[bytes] = (b"*",),
        reference: bytes = b"",
        selection: Sequence[bytes] = (),
        subscribed: bool = True,
        status: Sequence[bytes] = (b"UIDVALIDITY", b"UIDNEXT", b"HIGHESTMODSEQ"),
    ) -> Deferred[List[MailboxInfo]]:
        """LIST-EXTENDED (RFC 5258) with RETURN (SUBSCRIBED STATUS (...)) (RFC 5819)."""

        async def run() -> List[MailboxInfo]:
            parts: List[Part] = []
            if selection:
                parts.append(b"(" + b" ".join(selection) + b")")
            parts.append(quoted(reference))
            encoded = [quoted(p) for p in patterns]
            if len(encoded) == 1:
                parts.append(encoded[0])
            else:
                parts.append(b"(")
                parts.extend(encoded)
                parts.append(b")")
            returns: List[bytes] = []
            if subscribed:
                returns.append(b"SUBSCRIBED")
            if status:
                self.require([b"LIST-STATUS"])
                returns.append(b"STATUS (" + b" ".join(status) + b")")
            if returns:
                parts.append(b"RETURN (" + b" ".join(returns) + b")")
            result = await self.protocol.send(
                Command(b"LIST", _join_parens(parts), collect=(ListResponse, StatusResponse))
            )
            statuses: Dict[bytes, Dict[bytes, int]] = {}
            entries: List[ListResponse] = []
            for response in result.responses:
                if isinstance(response, ListResponse):
                    entries.append(response)
                elif isinstance(response, StatusResponse):
                    statuses.setdefault(response.mailbox, {}).update(response.items)
            return [
                MailboxInfo(
                    name=e.mailbox,
                    delimiter=e.delimiter,
                    attributes=e.attributes,
                    subscribed=e.has_attribute(b"\\Subscribed"),
                    status=statuses.get(e.mailbox),
                    extended=dict(e.extended),
                )
                for e in entries
            ]

        return self._deferred(run())

    def status(self, mailbox: bytes, items: Sequence[bytes]) -> Deferred[Dict[bytes, int]]:
        async def run() -> Dict[bytes, int]:
            result = await self._send(
                b"STATUS",
                astring(mailbox),
                b"(" + b" ".join(items) + b")",
                collect=(StatusResponse,),
            )
            # A STATUS about another mailbox (NOTIFY, or a confused server)
            # says nothing about this one.
            wanted = b"INBOX" if mailbox.upper() == b"INBOX" else mailbox
            found: Dict[bytes, int] = {}
            for response in result.responses:
                if isinstance(response, StatusResponse) and response.mailbox == wanted:
                    found.update(response.items)
            return found

        return self._deferred(run())

    def _simple(self, name: bytes, *mailboxes: bytes) -> Deferred[None]:
        async def run() -> None:
            await self._send(name, *(astring(m) for m in mailboxes))

        return self._deferred(run())

    def create(self, mailbox: bytes) -> Deferred[None]:
        return self._simple(b"CREATE", mailbox)

    def delete(self, mailbox: bytes) -> Deferred[None]:
        return self._simple(b"DELETE", mailbox)

    def rename(self, old: bytes, new: bytes) -> Deferred[None]:
        return self._simple(b"RENAME", old, new)

    def subscribe(self, mailbox: bytes) -> Deferred[None]:
        return self._simple(b"SUBSCRIBE", mailbox)

    def unsubscribe(self, mailbox: bytes) -> Deferred[None]:
        return self._simple(b"UNSUBSCRIBE", mailbox)

    # -- the selected mailbox --------------------------------------------

    def select_qresync(
        self,
        mailbox: bytes,
        uidvalidity: Optional[int] = None,
        modseq: Optional[int] = None,
        known_uids: Optional[UIDSet] = None,
        readonly: bool = False,
    ) -> Deferred[SelectResult]:
        """SELECT (or EXAMINE) with QRESYNC parameters when a state is known.

        The result carries the mailbox state plus what QRESYNC reported:
        UIDs vanished and flag changes since ``modseq``.  When the server's
        UIDVALIDITY differs from ``uidvalidity`` it reports no changes;
        compare the result's uidvalidity.
        """

        async def run() -> SelectResult:
            parts: List[Part] = [astring(mailbox)]
            if uidvalidity is not None and modseq is not None:
                qresync = b"%d %d" % (uidvalidity, modseq)
                if known_uids:
                    qresync += b" " + known_uids.to_bytes()
                parts.append(b"(QRESYNC (" + qresync + b"))")
            elif b"CONDSTORE" in self.protocol.capabilities:
                parts.append(b"(CONDSTORE)")
            name = b"EXAMINE" if readonly else b"SELECT"
            await self.protocol.send(Command(name, parts, barrier=True, mailbox=mailbox))
            selected = self.protocol.selected
            if selected is None or selected.uidvalidity is None:
                raise ProtocolError("server did not report the UIDVALIDITY of the mailbox")
            vanished, changes = selected.take_changes()
            return SelectResult(
                mailbox=mailbox,
                uidvalidity=selected.uidvalidity,
                uidnext=selected.uidnext if selected.uidnext is not None else 0,
                highestmodseq=selected.highestmodseq,
                exists=selected.exists or 0,
                vanished=vanished,
                changes=changes,
                readonly=selected.readonly,
                nomodseq=selected.nomodseq,
                uidnotsticky=selected.uidnotsticky,
                permanentflags=selected.permanentflags,
            )

        return self._deferred(run())

    def unselect(self) -> Deferred[None]:
        """Leave the selected mailbox without expunging (UNSELECT, RFC 3691).

        Without UNSELECT, EXAMINE a mailbox that cannot exist: the failed
        EXAMINE leaves nothing selected (RFC 3501 6.3.2), and unlike CLOSE
        it expunges nothing.
        """

        async def run() -> None:
            if self.protocol.selected is None:
                return
            if self.has_capability(b"UNSELECT"):
                await self._send(b"UNSELECT", barrier=True)
                return
            try:
                await self.protocol.send(
                    Command(b"EXAMINE", [_NO_SUCH_MAILBOX], barrier=True, mailbox=_NO_SUCH_MAILBOX)
                )
            except NoResponse:
                pass
            self.protocol.selected = None

        return self._deferred(run())

    def fetch_changes(
        self, changedsince: int, uids: Union[UIDSet, bytes] = b"1:*", vanished: bool = True
    ) -> Deferred[Changes]:
        """UID FETCH (FLAGS) (CHANGEDSINCE m [VANISHED]) on the selected mailbox."""

        async def run() -> Changes:
            modifier = b"(CHANGEDSINCE %d%s)" % (changedsince, b" VANISHED" if vanished else b"")
            commands = [
                Command(
                    b"UID FETCH",
                    (chunk, b"(UID MODSEQ FLAGS)", modifier),
                    collect=(FetchResponse, VanishedResponse),
                    uids=chunk_set,
                )
                for chunk, chunk_set in _uid_chunks(uids)
            ]
            results = await self._send_all(commands)
            gone = UIDSet.from_iterable(())
            changes: Dict[int, Tuple[int, Flags]] = {}
            for result in results:
                for response in result.responses:
                    if isinstance(response, VanishedResponse):
                        gone = gone | response.uids
                    elif isinstance(response, FetchResponse):
                        record_change(changes, response)
            return Changes(gone, changes)

        return self._deferred(run())

    def fetch_flags(self, uids: Union[UIDSet, bytes]) -> Deferred[Dict[int, Tuple[int, Flags]]]:
        """UID -> (MODSEQ, flags) for ``uids`` of the selected mailbox."""

        async def run() -> Dict[int, Tuple[int, Flags]]:
            commands = [
                Command(
                    b"UID FETCH",
                    (chunk, b"(UID MODSEQ FLAGS)"),
                    collect=(FetchResponse,),
                    uids=chunk_set,
                )
                for chunk, chunk_set in _uid_chunks(uids)
            ]
            changes: Dict[int, Tuple[int, Flags]] = {}
            for result in await self._send_all(commands):
                for response in result.responses:
                    if isinstance(response, FetchResponse):
                        record_change(changes, response)
            return changes

        return self._deferred(run())

    def fetch_messages(
        self,
        uids: Union[UIDSet, bytes],
        sink: Callable[[FetchedMessage], Optional[Deferred[None]]],
    ) -> Deferred[int]:
        """Stream the messages ``uids`` (flags, date, body) into ``sink``.

        When ``sink`` returns an unfired Deferred, reading from the server
        stops until it fires, so memory stays bounded whatever the mailbox
        size.  Fires with the number of messages delivered.
        """
        count = [0]

        def on_response(response: Response) -> Optional[Deferred[None]]:
            if not isinstance(response, FetchResponse):
                return None
            if response.body is None or response.uid is None:
                # A flag update racing with our FETCH: remember it.
                selected = self.protocol.selected
                if selected is not None:
                    selected.record_fetch(response)
                return None
            count[0] += 1
            return sink(
                FetchedMessage(
                    uid=response.uid,
                    flags=without_recent(response.flags or ()),
                    internaldate=response.internaldate,
                    body=response.body,
                    modseq=response.modseq,
                )
            )

        async def run() -> int:
            items = b"(UID FLAGS INTERNALDATE BODY.PEEK[])"
            if b"CONDSTORE" in self.protocol.enabled or b"QRESYNC" in self.protocol.enabled:
                items = b"(UID MODSEQ FLAGS INTERNALDATE BODY.PEEK[])"
            commands = [
                Command(
                    b"UID FETCH",
                    (chunk, items),
                    collect=(FetchResponse,),
                    on_response=on_response,
                    uids=chunk_set,
                )
                for chunk, chunk_set in _uid_chunks(uids)
            ]
            await self._send_all(commands)
            return count[0]

        return self._deferred(run())

    def append(self, mailbox: bytes, messages: Sequence[AppendMessage]) -> Deferred[AppendResult]:
        """APPEND ``messages`` (one MULTIAPPEND when offered), return APPENDUID.

        Without MULTIAPPEND the APPENDs are pipelined (with LITERAL+ nothing
        waits for a round trip).
        """

        async def run() -> AppendResult:
            if not messages:
                raise ValueError("nothing to append")
            if len(messages) == 1 or self.has_capability(b"MULTIAPPEND"):
                groups = [list(messages)]
            else:
                groups = [[m] for m in messages]
            commands = []
            for group in groups:
                parts: List[Part] = [astring(mailbox)]
                for message in group:
                    flags = without_recent(message.flags)
                    parts.append(flag_list(flags))
                    if message.internaldate is not None:
                        parts.append(b'"' + message.internaldate + b'"')
                    parts.append(Literal(message.body))
                commands.append(Command(b"APPEND", parts))
            results = await self._send_all(commands)
            uidvalidity: Optional[int] = None
            uids: List[int] = []
            for result in results:
                code = result.tagged.code
                if code is None or code.name != b"APPENDUID":
                    raise CapabilityMissingError("UIDPLUS", "no APPENDUID in the APPEND response")
                value = code.value
                assert isinstance(value, tuple)
                validity, given = value
                if uidvalidity is not None and validity != uidvalidity:
                    raise ProtocolError("APPENDUID changed UIDVALIDITY within one append")
                uidvalidity = validity
                uids.extend(given)
            if len(uids) != len(messages) or uidvalidity is None:
                raise ProtocolError(
                    f"APPENDUID names {len(uids)} UIDs for {len(messages)} messages"
                )
            return AppendResult(uidvalidity, tuple(uids))

        return self._deferred(run())

    def uid_store(
        self,
        uids: UIDSet,
        flags: Iterable[bytes],
        mode: bytes = b"",
        unchangedsince: Optional[int] = None,
        silent: bool = True,
    ) -> Deferred[StoreResult]:
        """UID STORE ``mode``FLAGS (``mode`` is b"+", b"-" or b"" to replace).

        With ``unchangedsince`` (CONDSTORE), messages changed since then are
        left alone and reported in ``modified``.
        """

        async def run() -> StoreResult:
            item = mode + b"FLAGS" + (b".SILENT" if silent else b"")
            head: Tuple[bytes, ...] = ()
            if unchangedsince is not None:
                head = (b"(UNCHANGEDSINCE %d)" % unchangedsince,)
            value = flag_list(flags)
            commands = [
                Command(
                    b"UID STORE",
                    (chunk, *head, item, value),
                    collect=(FetchResponse,),
                    uids=chunk_set,
                    silent=silent,
                )
                for chunk, chunk_set in _uid_chunks(uids)
            ]
            modified = UIDSet.from_iterable(())
            modseqs: Dict[int, int] = {}
            new_flags: Dict[int, Flags] = {}
            for result in await self._send_all(commands):
                code = result.tagged.code
                if (
                    code is not None
                    and code.name == b"MODIFIED"
                    and isinstance(code.value, UIDSet)
                ):
                    modified = modified | code.value
                for response in result.responses:
                    if isinstance(response, FetchResponse) and response.uid is not None:
                        if response.modseq is not None:
                            modseqs[response.uid] = response.modseq
                        if response.flags is not None:
                            new_flags[response.uid] = response.flags
            return StoreResult(modified, modseqs, new_flags)

        return self._deferred(run())

    def uid_expunge(self, uids: UIDSet) -> Deferred[UIDSet]:
        """UID EXPUNGE (UIDPLUS): expunge only ``uids`` (if flagged \\Deleted)."""

        async def run() -> UIDSet:
            self.require([b"UIDPLUS"])
            commands = [
                Command(b"UID EXPUNGE", (chunk,), collect=(VanishedResponse,))
                for chunk, _ in _uid_chunks(uids)
            ]
            gone = UIDSet.from_iterable(())
            for result in await self._send_all(commands):
                for response in result.responses:
                    if isinstance(response, VanishedResponse):
                        gone = gone | response.uids
            return gone

        return self._deferred(run())

    def uid_search(self, criteria: bytes) -> Deferred[UIDSet]:
        """UID SEARCH ``criteria``: the matching UIDs (ESEARCH when offered)."""

        async def run() -> UIDSet:
            found = UIDSet.from_iterable(())
            if self.has_capability(b"ESEARCH"):
                result = await self._send(
                    b"UID SEARCH", b"RETURN (ALL)", criteria, collect=(ESearchResponse,)
                )
                for response in result.responses:
                    if isinstance(response, ESearchResponse):
                        value = response.items.get(b"ALL")
                        if isinstance(value, UIDSet):
                            found = found | value
                return found
            result = await self._send(b"UID SEARCH", criteria, collect=(UntaggedResponse,))
            numbers: List[int] = []
            for response in result.responses:
                if isinstance(response, UntaggedResponse) and response.name == b"SEARCH":
                    for arg in response.args:
                        if isinstance(arg, bytes) and arg.isdigit():
                            numbers.append(int(arg))
            return UIDSet.from_iterable(numbers)

        return self._deferred(run())

    # -- NOTIFY ------------------------------------------------------------

    def notify_set(self, spec: bytes) -> Deferred[None]:
        """NOTIFY SET ``spec`` (RFC 5465); events reach the observers.

        Send it once per connection: Dovecot 2.3 sends no more events after
        a second NOTIFY SET on the same connection.
        """

        async def run() -> None:
            self.require([b"NOTIFY"])
            await self._send(b"NOTIFY", b"SET", spec, barrier=True)

        return self._deferred(run())


def notify_spec(initial_status: bool = False, mailboxes: bytes = b"PERSONAL") -> bytes:
    """The NOTIFY SET argument imapsync uses.

    Selected mailbox: new messages (with UID, MODSEQ, FLAGS), expunges and
    flag changes; elsewhere in ``mailboxes``: the same events (reported by
    the server as STATUS responses), plus mailbox and subscription changes.
    With ``initial_status`` the server first sends a STATUS of each mailbox.
    """
    events = b"MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange"
    spec = [b"STATUS"] if initial_status else []
    spec.append(b"(SELECTED (MessageNew (UID MODSEQ FLAGS) MessageExpunge FlagChange))")
    spec.append(b"(" + mailboxes + b" (" + events + b"))")
    return b" ".join(spec)


def _quoted_bytes(value: bytes) -> bytes:
    part = quoted(value)
    if isinstance(part, Literal):
        raise ValueError(f"value cannot be sent as a quoted string: {value!r}")
    return part


def _join_parens(parts: List[Part]) -> List[Part]:
    """Glue ``(`` and ``)`` to their neighbours so no space separates them."""
    out: List[Part] = []
    glue = False
    for part in parts:
        if part == b"(":
            out.append(b"(")
            glue = True
            continue
        if part == b")":
            last = out[-1] if out else None
            if isinstance(last, bytes):
                out[-1] = last + b")"
            else:
                out.append(b")")
            continue
        if glue and isinstance(part, bytes) and isinstance(out[-1], bytes):
            out[-1] = out[-1] + part
        else:
            out.append(part)
        glue = False
    return out


async def close_all(
    sessions: Sequence[IIMAPSession], clock: IReactorTime, timeout: float = 15
) -> None:
    """LOGOUT every session, then wait (at most ``timeout`` s each) until its
    connection is closed: a tunnel's command has exited."""
    await gather(*(s.logout() for s in sessions))
    for session in sessions:
        closed = session.when_closed()
        closed.addTimeout(timeout, clock)
        try:
            await closed
        except Exception:
            pass

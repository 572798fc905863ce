# -*- test-case-name: tests.test_imap_protocol -*-
"""The IMAP4rev1 client wire protocol: tags, pipelining, literals, state.

`IMAP4ClientProtocol` sends commands (pipelined within a window, with
barriers), feeds what it receives to the incremental parser and routes each
untagged response by meaning: into the connection state (capabilities, the
selected mailbox), into the oldest in-flight command that collects that
kind of response, or to observers of unsolicited data.  On a tagged line
the state is updated first, then the command's Deferred fires.
"""

from __future__ import annotations

import zlib
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Type, Union

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsync._prefix import PrefixLogger
from imapsync.imap._parser import ResponseParser
from imapsync.imap.errors import (
    BadResponse,
    ByeResponse,
    CommandTimeoutError,
    ConnectionLostError,
    IMAPError,
    NoResponse,
    ProtocolError,
)
from imapsync.imap.response import (
    CapabilityResponse,
    ConditionResponse,
    ContinuationRequest,
    EnabledResponse,
    FetchResponse,
    FlagsResponse,
    NumberResponse,
    Response,
    ResponseCode,
    StatusResponse,
    TaggedResponse,
    VanishedResponse,
)
from imapsync.imap.spool import Body, SpooledBody
from imapsync.imap.uidset import UIDSet

log = PrefixLogger()

# How many commands may await their tagged response at once.  Dovecot reads
# pipelined commands as fast as we send them; 64 keeps a LAN round trip
# busy without letting a runaway caller queue unbounded work on the server.
DEFAULT_WINDOW = 64

# Seconds without a byte from the server while a command is pending after
# which the connection is considered dead.  Long enough for a server busy
# with a large MULTIAPPEND, short enough that a cut link is noticed.
DEFAULT_TIMEOUT = 120.0

# A spooled literal (imapsync.imap.spool) is read back and written this
# many bytes at a time, the next only once the transport has drained: the
# transport's buffer, not the message, bounds the memory used.
STREAM_CHUNK = 256 * 1024

# Synchronizing literals up to this size are sent non-synchronizing when the
# server offers LITERAL- (RFC 7888); LITERAL+ has no limit.
LITERAL_MINUS_MAX = 4096


@attrs.frozen
class Literal:
    """A command argument sent as a literal (``{N}`` or ``~{N}`` for binary)."""

    data: Body
    binary: bool = False


Part = Union[bytes, Literal]


@attrs.define(eq=False)
class SelectedMailbox:
    """What the server told us about the selected mailbox.

    ``vanished`` and ``changes`` accumulate unsolicited expunges and flag
    updates (UID -> (MODSEQ, flags)) until the session takes them.
    """

    mailbox: bytes
    readonly: bool = False
    uidvalidity: Optional[int] = None
    uidnext: Optional[int] = None
    highestmodseq: Optional[int] = None
    exists: Optional[int] = None
    nomodseq: bool = False
    uidnotsticky: bool = False
    flags: Tuple[bytes, ...] = ()
    permanentflags: Tuple[bytes, ...] = ()
    vanished: List[UIDSet] = attrs.field(factory=list)
    changes: Dict[int, Tuple[int, Tuple[bytes, ...]]] = attrs.field(factory=dict)

    def record_fetch(self, response: FetchResponse) -> None:
        modseq = record_change(self.changes, response)
        if modseq is not None and self.highestmodseq is not None and modseq > self.highestmodseq:
            self.highestmodseq = modseq

    def take_changes(self) -> Tuple[UIDSet, Dict[int, Tuple[int, Tuple[bytes, ...]]]]:
        """Return and forget the accumulated (vanished, changes)."""
        vanished = UIDSet.from_iterable(())
        for uids in self.vanished:
            vanished = vanished | uids
        changes = self.changes
        for uid in vanished:
            changes.pop(uid, None)
        self.vanished = []
        self.changes = {}
        return vanished, changes


@attrs.frozen
class CommandResult:
    """A completed command: its tagged OK and the responses it collected."""

    tagged: TaggedResponse
    responses: Tuple[Response, ...]


@attrs.frozen
class _LiteralData:
    data: Body


@attrs.define(eq=False)
class Command:
    """One command: what to send and where its responses go."""

    name: bytes
    parts: Sequence[Part] = ()
    # Wait for all in-flight commands to complete before sending, and send
    # nothing else until this one completes.
    barrier: bool = False
    # Untagged response classes this command collects into ``responses``.
    collect: Tuple[Type[Any], ...] = ()
    # Called with each collected response instead of storing it; may return
    # a Deferred to pause reading until it fires (backpressure).
    on_response: Optional[Callable[[Response], Optional[Deferred[None]]]] = None
    # Called with each continuation request's text; returns the line to send.
    on_continuation: Optional[Callable[[bytes], bytes]] = None
    # Arguments are secrets: never log them (unless debug level >= 2).
    secret: bool = False
    # Called on the tagged OK before the Deferred fires, while no further
    # byte has been parsed (STARTTLS and COMPRESS switch the stream here).
    on_ok: Optional[Callable[[], None]] = None
    # For SELECT/EXAMINE: the mailbox, as sent.
    mailbox: Optional[bytes] = None
    # For UID FETCH/STORE: the UIDs asked for (None: all).  A FETCH response
    # for another UID is news from the server, not an answer.
    uids: Optional[UIDSet] = None
    # UID STORE .SILENT: flags in a FETCH response are someone else's change.
    silent: bool = False
    tag: bytes = b""
    deferred: Deferred[CommandResult] = attrs.field(factory=Deferred)
    responses: List[Response] = attrs.field(factory=list)
    # Parts not yet written (after a synchronizing literal).
    _unsent: Optional[Deque[Union[Part, _LiteralData]]] = None
    _handler_error: Optional[Failure] = None


def _literal_marker(literal: Literal, non_sync: bool) -> bytes:
    prefix = b"~{" if literal.binary else b"{"
    return b"%s%d%s}\r\n" % (prefix, len(literal.data), b"+" if non_sync else b"")


class IMAP4ClientProtocol(Protocol):
    """A pipelining IMAP4rev1 client protocol.

    ``greeting`` fires with the server's greeting (OK or PREAUTH), or fails
    on BYE.  Commands are sent with `send`.  Everything the server sends
    without being asked goes to observers added with `add_observer`.
    """

    def __init__(
        self,
        clock: IReactorTime,
        window: int = DEFAULT_WINDOW,
        timeout: float = DEFAULT_TIMEOUT,
        name: str = "imap",
        debug: int = 0,
    ) -> None:
        self.clock = clock
        self.window = window
        self.timeout = timeout
        self.name = name
        self.debug = debug
        self.greeting: Deferred[ConditionResponse] = Deferred()
        self.capabilities: frozenset[bytes] = frozenset()
        # Incremented whenever the server announces its capabilities.
        self.capability_generation = 0
        self.enabled: frozenset[bytes] = frozenset()
        self.selected: Optional[SelectedMailbox] = None
        self.status_cache: Dict[bytes, Dict[bytes, int]] = {}
        self.bytes_received = 0
        self.bytes_sent = 0
        self._parser = ResponseParser()
        self._parser.keep_text = debug > 0
        self._tag_counter = 0
        self._queue: Deque[Command] = deque()
        self._inflight: Dict[bytes, Command] = {}
        # The command whose synchronizing literal awaits a "+".
        self._sending: Optional[Command] = None
        self._barrier: Optional[Command] = None
        self._pending_select: Optional[SelectedMailbox] = None
        self._greeted = False
        self._paused = False
        self._processing = False
        self._lost: Optional[Failure] = None
        self._bye: Optional[str] = None
        self._timer: Optional[IDelayedCall] = None
        self._observers: List[Callable[[Response], None]] = []
        self._lost_waiters: List[Deferred[BaseException]] = []
        self._closed = False
        self._closed_waiters: List[Deferred[None]] = []
        self._inflater: Optional[Any] = None
        self._deflater: Optional[Any] = None
        # Bytes queued behind a spooled literal being streamed.
        self._out: Deque[Body] = deque()
        self._streaming: Optional[_SpoolWriter] = None

    # -- observers -------------------------------------------------------

    def add_observer(self, observer: Callable[[Response], None]) -> None:
        """Call ``observer`` with every unsolicited response."""
        self._observers.append(observer)

    def remove_observer(self, observer: Callable[[Response], None]) -> None:
        self._observers.remove(observer)

    def when_lost(self) -> Deferred[BaseException]:
        """A fresh Deferred that fires with the error once the connection is gone."""
        d: Deferred[BaseException] = Deferred()
        if self._lost is not None:
            d.callback(_error_of(self._lost))
        else:
            self._lost_waiters.append(d)
        return d

    def when_closed(self) -> Deferred[None]:
        """A fresh Deferred that fires once the transport is really closed.

        For a tunnel that is when the command has exited: wait for it before
        exiting, so no child process is left behind.
        """
        d: Deferred[None] = Deferred()
        if self._closed:
            d.callback(None)
        else:
            self._closed_waiters.append(d)
        return d

    @property
    def _transport(self) -> Any:
        # ITransport does not declare the producer, TLS and abort methods
        # that TCP, TLS and our tunnel transports all have.
        return self.transport

    @property
    def connected_and_open(self) -> bool:
        return self._lost is None and self.transport is not None

    # -- sending ---------------------------------------------------------

    def send(self, command: Command) -> Deferred[CommandResult]:
        """Queue ``command``; its Deferred fires with its `CommandResult`."""
        if self._lost is not None:
            return _failed(self._lost)
        self._tag_counter += 1
        command.tag = b"%d" % self._tag_counter
        self._queue.append(command)
        self._pump()
        return command.deferred

    def _pump(self) -> None:
        """Write queued commands while the window, barriers and literals allow."""
        while self._queue and self._lost is None and self.transport is not None:
            if self._sending is not None or self._barrier is not None:
                return
            if len(self._inflight) >= self.window:
                return
            command = self._queue[0]
            if command.barrier and self._inflight:
                return
            self._queue.popleft()
            self._inflight[command.tag] = command
            if command.barrier:
                self._barrier = command
                if command.mailbox is not None:
                    self._pending_select = SelectedMailbox(
                        mailbox=command.mailbox, readonly=command.name == b"EXAMINE"
                    )
            self._arm_timer()
            command._unsent = deque[Union[Part, _LiteralData]](command.parts)
            self._write_command_parts(command, first=True)

    def _write_command_parts(self, command: Command, first: bool) -> None:
        """Write ``command`` up to its end or its next synchronizing literal."""
        chunks: List[Body] = []
        log_chunks: List[bytes] = []
        if first:
            head = command.tag + b" " + command.name
            chunks.append(head)
            log_chunks.append(head)
        unsent = command._unsent
        assert unsent is not None
        non_sync = b"LITERAL+" in self.capabilities
        non_sync_small = non_sync or b"LITERAL-" in self.capabilities
        waiting = False
        while unsent:
            part = unsent.popleft()
            assert not isinstance(part, _LiteralData)
            if isinstance(part, bytes):
                if chunks or not first:
                    chunks.append(b" ")
                    log_chunks.append(b" ")
                chunks.append(part)
                log_chunks.append(part)
                continue
            plus = non_sync or (non_sync_small and len(part.data) <= LITERAL_MINUS_MAX)
            marker = _literal_marker(part, plus)
            chunks.append(b" " + marker)
            log_chunks.append(b" " + marker[:-2])
            if plus:
                chunks.append(part.data)
                continue
            # Synchronizing: wait for "+", then send the data and the rest.
            unsent.appendleft(_LiteralData(part.data))
            self._sending = command
            waiting = True
            break
        if not waiting:
            chunks.append(b"\r\n")
        self._log_sent(command, b"".join(log_chunks))
        self._write(chunks)

    def _continue_literal(self, command: Command) -> None:
        unsent = command._unsent
        assert unsent is not None
        data = unsent.popleft()
        assert isinstance(data, _LiteralData)
        self._sending = None
        self._write([data.data])
        self._write_command_parts(command, first=False)

    def _write(self, chunks: Sequence[Body]) -> None:
        if self.transport is None:
            return
        self.bytes_sent += sum(len(c) for c in chunks)
        if self._streaming is None and not any(isinstance(c, SpooledBody) for c in chunks):
            self._send_bytes(chunks)  # type: ignore[arg-type]
            return
        # A spooled literal is streamed; whatever follows waits its turn.
        self._out.extend(chunks)
        if self._streaming is None:
            self._drain_out()

    def _drain_out(self) -> None:
        """Write the queued bytes, up to the next spooled literal, which starts streaming."""
        pending: List[bytes] = []
        while self._out and self.transport is not None:
            chunk = self._out.popleft()
            if isinstance(chunk, SpooledBody):
                if pending:
                    self._send_bytes(pending)
                    pending = []
                self._streaming = _SpoolWriter(self, chunk)
                self._transport.registerProducer(self._streaming, True)
                self._streaming.resumeProducing()
                return
            pending.append(chunk)
        if pending:
            self._send_bytes(pending)

    def _streamed(self, writer: _SpoolWriter) -> None:
        """``writer`` wrote its last byte."""
        if self._streaming is not writer:
            return
        self._streaming = None
        if self.transport is not None:
            self._transport.unregisterProducer()
        self._drain_out()

    def _send_bytes(self, chunks: Sequence[bytes]) -> None:
        if self.transport is None:
            return
        if self._deflater is not None:
            compressed = [self._deflater.compress(c) for c in chunks]
            compressed.append(self._deflater.flush(zlib.Z_SYNC_FLUSH))
            self.transport.write(b"".join(compressed))
        else:
            self.transport.writeSequence(list(chunks))

    def _log_sent(self, command: Command, line: bytes) -> None:
        if not self.debug:
            return
        if command.secret and self.debug < 2:
            line = command.tag + b" " + command.name + b" [REDACTED]"
        log.debug("{prefix}C: {line}", server=self.name, line=line.decode("utf-8", "replace"))

    # -- receiving -------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if self._inflater is not None:
            try:
                data = self._inflater.decompress(data)
            except zlib.error as e:
                self._fatal(ProtocolError(f"cannot inflate COMPRESS=DEFLATE data: {e}"))
                return
        self._parser.feed(data)
        if self._inflight:
            self._arm_timer()
        self._process()

    def _process(self) -> None:
        """Handle complete responses until the buffer is empty or we pause."""
        if self._processing:
            return
        self._processing = True
        try:
            while not self._paused and self._lost is None:
                try:
                    response = self._parser.next_response()
                except ProtocolError as e:
                    self._fatal(e)
                    return
                if response is None:
                    return
                self._log_received(response)
                self._handle(response)
        finally:
            self._processing = False

    def _log_received(self, response: Response) -> None:
        if not self.debug:
            return
        line = self._parser.last_text
        if (
            self.debug < 2
            and isinstance(response, ContinuationRequest)
            and any(c.secret for c in self._inflight.values())
        ):
            line = b"+ [REDACTED]"
        log.debug(
            "{prefix}S: {line}", server=self.name, line=line.decode("utf-8", "backslashreplace")
        )

    def _handle(self, response: Response) -> None:
        if not self._greeted:
            self._handle_greeting(response)
            return
        if isinstance(response, TaggedResponse):
            self._handle_tagged(response)
        elif isinstance(response, ContinuationRequest):
            self._handle_continuation(response)
        else:
            self._handle_untagged(response)

    def _handle_greeting(self, response: Response) -> None:
        self._greeted = True
        if not isinstance(response, ConditionResponse) or response.status not in (
            b"OK",
            b"PREAUTH",
            b"BYE",
        ):
            self._fatal(
                ProtocolError(
                    "the server sent something else before its greeting "
                    f"(* OK, * PREAUTH or * BYE): {_describe(response)}"
                )
            )
            return
        if response.status == b"BYE":
            self._fatal(ByeResponse(_text(response.text)))
            return
        self._update_from_code(response.code)
        self.greeting.callback(response)

    def _handle_tagged(self, response: TaggedResponse) -> None:
        command = self._inflight.pop(response.tag, None)
        if command is None:
            self._fatal(ProtocolError(f"tagged response for unknown tag {response.tag!r}"))
            return
        if self._sending is command:
            self._sending = None
        if not self._inflight:
            self._cancel_timer()
        self._update_from_code(response.code)
        if command.mailbox is not None:
            pending, self._pending_select = self._pending_select, None
            # A failed SELECT leaves no mailbox selected (RFC 3501 6.3.1).
            self.selected = pending if response.status == b"OK" else None
        elif command.name in (b"UNSELECT", b"CLOSE") and response.status == b"OK":
            self.selected = None
        if self.selected is not None and response.code is not None:
            _apply_select_code(self.selected, response.code)
        if self._barrier is command:
            self._barrier = None
        if response.status == b"OK":
            if command.on_ok is not None:
                try:
                    command.on_ok()
                except Exception:
                    self._record_handler_error(command, Failure())
            if command._handler_error is not None:
                command.deferred.errback(command._handler_error)
            else:
                command.deferred.callback(CommandResult(response, tuple(command.responses)))
        else:
            error_class = BadResponse if response.status == b"BAD" else NoResponse
            refused = error_class(command.name, response.code, _text(response.text))
            refused.server = self.name
            command.deferred.errback(Failure(refused))
        self._pump()

    def _handle_continuation(self, response: ContinuationRequest) -> None:
        command = self._sending
        if command is not None:
            self._continue_literal(command)
            return
        for command in self._inflight.values():
            if command.on_continuation is not None:
                line = command.on_continuation(response.text)
                if self.debug:
                    shown = line if self.debug >= 2 or not command.secret else b"[REDACTED]"
                    log.debug(
                        "{prefix}C: {line}",
                        server=self.name,
                        line=shown.decode("utf-8", "replace"),
                    )
                self._write([line, b"\r\n"])
                return
        self._fatal(ProtocolError("unexpected continuation request"))

    def _handle_untagged(self, response: Response) -> None:
        selected = self._pending_select or self.selected
        if isinstance(response, ConditionResponse):
            if response.status == b"BYE":
                self._bye = _text(response.text)
                return
            if response.code is not None:
                self._update_from_code(response.code)
                if selected is not None:
                    _apply_select_code(selected, response.code)
                if response.code.name in (b"NOTIFICATIONOVERFLOW", b"ALERT", b"BADEVENT"):
                    self._notify(response)
            if response.status != b"OK":
                log.warn(
                    "{prefix}server says {status}: {text}",
                    server=self.name,
                    status=response.status.decode("ascii", "replace"),
                    text=_text(response.text),
                )
            return
        if isinstance(response, CapabilityResponse):
            self.capabilities = frozenset(response.capabilities)
            self.capability_generation += 1
        elif isinstance(response, EnabledResponse):
            self.enabled = self.enabled | frozenset(response.capabilities)
        elif isinstance(response, FlagsResponse):
            if selected is not None:
                selected.flags = response.flags
        elif isinstance(response, NumberResponse):
            if response.name == b"EXISTS" and selected is not None:
                selected.exists = response.number
        elif isinstance(response, StatusResponse):
            self.status_cache.setdefault(response.mailbox, {}).update(response.items)
        command = self._collector(response)
        if command is not None:
            self._deliver(command, response)
            if not (command.silent and isinstance(response, FetchResponse)):
                return
        if isinstance(response, FetchResponse):
            if selected is not None:
                selected.record_fetch(response)
        elif isinstance(response, VanishedResponse):
            if selected is not None:
                selected.vanished.append(response.uids)
        if (
            isinstance(response, (FetchResponse, VanishedResponse))
            and self._pending_select is not None
        ):
            # QRESYNC data of the SELECT in flight: not news to anyone.
            return
        if not isinstance(
            response, (CapabilityResponse, EnabledResponse, FlagsResponse, NumberResponse)
        ):
            self._notify(response)

    def _collector(self, response: Response) -> Optional[Command]:
        for command in self._inflight.values():
            if command.collect and isinstance(response, command.collect):
                if (
                    command.uids is not None
                    and isinstance(response, FetchResponse)
                    and (response.uid is None or response.uid not in command.uids)
                ):
                    continue
                return command
        return None

    def _deliver(self, command: Command, response: Response) -> None:
        if command.on_response is None:
            command.responses.append(response)
            return
        if command._handler_error is not None:
            return
        try:
            result = command.on_response(response)
        except Exception:
            command._handler_error = Failure()
            return
        if isinstance(result, Deferred) and not result.called:
            self._pause()
            result.addCallbacks(lambda _: self._resume(), lambda f: self._resume(command, f))
        elif isinstance(result, Deferred):
            result.addErrback(lambda f: self._record_handler_error(command, f))

    def _record_handler_error(self, command: Command, failure: Failure) -> None:
        if command._handler_error is None:
            command._handler_error = failure

    def _pause(self) -> None:
        self._paused = True
        self._cancel_timer()
        if self.transport is not None:
            self._transport.pauseProducing()

    def _resume(
        self, command: Optional[Command] = None, failure: Optional[Failure] = None
    ) -> None:
        if command is not None and failure is not None:
            self._record_handler_error(command, failure)
        self._paused = False
        if self._lost is not None:
            return
        if self.transport is not None:
            self._transport.resumeProducing()
        if self._inflight:
            self._arm_timer()
        self._process()

    def _notify(self, response: Response) -> None:
        for observer in list(self._observers):
            try:
                observer(response)
            except Exception:
                log.failure("{prefix}observer failed", server=self.name)

    def _update_from_code(self, code: Optional[ResponseCode]) -> None:
        if code is None:
            return
        if code.name == b"CAPABILITY" and isinstance(code.value, tuple):
            self.capabilities = frozenset(code.value)
            self.capability_generation += 1

    # -- stream transformations ----------------------------------------

    def start_tls(self, creator: Any) -> None:
        """Start the TLS handshake after STARTTLS's tagged OK.

        Bytes that arrived after the OK came in clear text and would be
        taken as if they had come over TLS: an injection attack (CVE-2011-0411
        and kin), so they abort the connection.
        """
        if self._parser.take_remaining():
            error = ProtocolError(
                "server sent data after the STARTTLS OK before the TLS handshake "
                "(response injection?); connection aborted"
            )
            self._fatal(error)
            raise error
        assert self.transport is not None
        self._transport.startTLS(creator)

    def start_compression(self) -> None:
        """Switch both directions to raw DEFLATE (RFC 4978).

        Bytes that arrived after the tagged OK are already compressed.
        """
        leftover = self._parser.take_remaining()
        self._inflater = zlib.decompressobj(-15)
        # Level 1: measured 2-7 times cheaper than the default 6 on mail, for
        # 0.67 against 0.64 of the size; the reactor thread does this work.
        self._deflater = zlib.compressobj(1, zlib.DEFLATED, -15)
        if leftover:
            self._parser.feed(self._inflater.decompress(leftover))
            self._process()

    # -- timeouts and connection loss ------------------------------------

    def _arm_timer(self) -> None:
        if self._paused or self._lost is not None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.timeout)
            return
        self._timer = self.clock.callLater(self.timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._fatal(CommandTimeoutError(f"no answer from the server for {self.timeout:g} seconds"))

    def _fatal(self, error: IMAPError) -> None:
        """Fail everything with ``error`` and drop the connection."""
        if self._lost is not None:
            return
        self._fail_all(Failure(error))
        if self.transport is not None:
            self._transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._lost is None:
            # A BYE first: it says why (a tunnel then reports its exit).
            if self._bye is not None:
                error: IMAPError = ByeResponse(self._bye)
            elif reason is not None and isinstance(reason.value, ConnectionLostError):
                detail = str(reason.value)
                error = (
                    reason.value
                    if "connection" in detail
                    else ConnectionLostError(f"connection to the server lost: {detail}")
                )
            elif reason is not None and isinstance(reason.value, IMAPError):
                error = reason.value
            else:
                if reason is None or reason.check(ConnectionDone):
                    # "closed cleanly" would mislead: commands were pending.
                    detail = "closed by the server"
                else:
                    detail = reason.getErrorMessage()
                error = ConnectionLostError(f"connection to the server lost: {detail}")
            self._fail_all(Failure(error))
        self._cancel_timer()
        self._closed = True
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _fail_all(self, failure: Failure) -> None:
        if isinstance(failure.value, IMAPError) and failure.value.server is None:
            failure.value.server = self.name
        self._lost = failure
        if self._streaming is not None:
            self._streaming.stopProducing()
            self._streaming = None
        self._out.clear()
        self._cancel_timer()
        pending = list(self._inflight.values()) + list(self._queue)
        self._inflight.clear()
        self._queue.clear()
        self._sending = None
        self._barrier = None
        if not self.greeting.called:
            self.greeting.errback(failure)
        for command in pending:
            command.deferred.errback(failure)
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(_error_of(failure))


def _apply_select_code(selected: SelectedMailbox, code: ResponseCode) -> None:
    name, value = code.name, code.value
    if name == b"UIDVALIDITY" and isinstance(value, int):
        selected.uidvalidity = value
    elif name == b"UIDNEXT" and isinstance(value, int):
        selected.uidnext = value
    elif name == b"HIGHESTMODSEQ" and isinstance(value, int):
        selected.highestmodseq = value
    elif name == b"NOMODSEQ":
        selected.nomodseq = True
    elif name == b"UIDNOTSTICKY":
        selected.uidnotsticky = True
    elif name == b"PERMANENTFLAGS" and isinstance(value, tuple):
        selected.permanentflags = value
    elif name == b"READ-ONLY":
        selected.readonly = True


def record_change(
    changes: Dict[int, Tuple[int, Tuple[bytes, ...]]], response: FetchResponse
) -> Optional[int]:
    """Keep the newest (MODSEQ, flags) that ``response`` reports for its UID.

    Returns its MODSEQ (0 without CONDSTORE), or None when it reports no flags.
    """
    if response.uid is None or response.flags is None:
        return None
    modseq = response.modseq if response.modseq is not None else 0
    known = changes.get(response.uid)
    if known is None or modseq >= known[0]:
        changes[response.uid] = (modseq, without_recent(response.flags))
    return modseq


def without_recent(flags: Tuple[bytes, ...]) -> Tuple[bytes, ...]:
    """``flags`` less ``\\Recent``, which no client can set: flags the session
    API returns never hold it."""
    return tuple(f for f in flags if f.lower() != b"\\recent")


def _error_of(failure: Failure) -> BaseException:
    error = failure.value
    assert error is not None
    return error


def _describe(response: Response) -> str:
    """A short account of ``response`` for an error message."""
    if isinstance(response, TaggedResponse):
        return "a tagged {} for command {}".format(
            response.status.decode("ascii", "replace"), response.tag.decode("ascii", "replace")
        )
    if isinstance(response, ContinuationRequest):
        return "a continuation request"
    if isinstance(response, ConditionResponse):
        return "an untagged " + response.status.decode("ascii", "replace")
    name = getattr(response, "name", None)
    if isinstance(name, bytes):
        return "an untagged " + name.decode("ascii", "replace")
    return "an untagged " + type(response).__name__.removesuffix("Response").upper()


def _text(text: bytes) -> str:
    return text.decode("utf-8", "replace")


def _failed(failure: Failure) -> Deferred[CommandResult]:
    d: Deferred[CommandResult] = Deferred()
    d.errback(failure)
    return d


@implementer(IPushProducer)
class _SpoolWriter:
    """Streams one spooled literal to the protocol's transport.

    A push producer: it writes `STREAM_CHUNK` bytes at a time until the
    transport's buffer is full (the transport pauses it) and goes on when
    the transport resumes it.
    """

    def __init__(self, protocol: IMAP4ClientProtocol, body: SpooledBody) -> None:
        self._protocol = protocol
        self._body = body
        self._offset = 0
        self._paused = False
        self._stopped = False
        self._writing = False

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._paused = self._stopped = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._writing or self._stopped:
            return
        self._writing = True
        protocol, body = self._protocol, self._body
        try:
            while not self._paused and self._offset < len(body):
                data = body.read(self._offset, STREAM_CHUNK)
                if not data:
                    protocol._fatal(ProtocolError("a spooled message was truncated on disk"))
                    return
                self._offset += len(data)
                protocol._send_bytes([data])
                # Uploading is progress: the server owes no answer meanwhile.
                protocol._arm_timer()
        except OSError as e:
            protocol._fatal(ProtocolError(f"cannot read back a spooled message: {e.strerror}"))
            return
        finally:
            self._writing = False
        if self._offset >= len(body) and not self._stopped:
            protocol._streamed(self)

# -*- test-case-name: tests.test_broken_dovecot -*-
"""A TCP proxy on 127.0.0.1 that breaks the connections it relays, on purpose.

Test tooling, not product code: threads and blocking sockets.  It sits
between imapsync and a `DovecotDaemon`'s IMAP port and, once a `Fault`'s
trigger point is reached in one direction of a connection, cuts the
connection, stalls that direction for a while, or delivers its bytes one
at a time.  A trigger is a byte offset in that direction's stream, or the
``nth`` match of a regular expression there (plus ``skip`` bytes), so that
a cut lands in the middle of a literal (``BODY[] {300000}\\r\\n`` then 1000
bytes) or of a tagged response line (``\\n12 OK `` then 2 bytes).

Every thread polls a stop flag at least every `POLL` seconds: `close()`
stops everything, and `cut_all()` breaks the live connections at once.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from typing import Dict, List, Optional

import attrs

__all__ = ["CUT", "DOWN", "STALL", "TRICKLE", "UP", "Fault", "FaultProxy"]

#: Client to server (imapsync to Dovecot): commands, APPEND literals.
UP = "up"
#: Server to client: responses, FETCH literals.
DOWN = "down"
CUT = "cut"
STALL = "stall"
TRICKLE = "trickle"
#: How often blocked threads look at their stop flags, in seconds.
POLL = 0.05
# Bytes kept from the end of a chunk so that a pattern spanning two
# chunks is still found.
_OVERLAP = 512


@attrs.define(eq=False)
class Fault:
    """What to break, in which direction, and from which point of the stream.

    The trigger point is ``after`` bytes into the direction's stream when
    ``pattern`` is None; else ``skip`` bytes past the start of the ``nth``
    match of ``pattern`` found from ``after`` on.  A fault fires once, on
    the first connection that reaches its point, unless ``every`` is set
    (then it fires on each connection opened while it is armed).
    """

    mode: str
    direction: str = DOWN
    after: int = 0
    pattern: Optional[bytes] = None
    nth: int = 1
    skip: int = 0
    #: STALL: how long the direction stops relaying.
    seconds: float = 0.0
    #: TRICKLE: the pause after each byte, and how many bytes (None: to the end).
    delay: float = 0.0
    length: Optional[int] = None
    #: CUT: close with a TCP reset rather than a FIN.
    reset: bool = False
    every: bool = False
    #: How many times it fired.
    fired: int = 0

    def __attrs_post_init__(self) -> None:
        if self.mode not in (CUT, STALL, TRICKLE):
            raise ValueError(f"unknown fault mode {self.mode!r}")
        if self.direction not in (UP, DOWN):
            raise ValueError(f"unknown direction {self.direction!r}")


class _Trigger:
    """Find where a fault's trigger point falls in one direction's stream.

    ``origin`` is the stream offset when the fault was armed: ``after`` and
    the pattern search count from there.
    """

    def __init__(self, fault: Fault, origin: int = 0) -> None:
        self.fault = fault
        self.pattern = re.compile(fault.pattern, re.S) if fault.pattern is not None else None
        self.matches = 0
        self.point: Optional[int] = None if self.pattern is not None else origin + fault.after
        self._tail = b""
        # Where the next match may start (matches before were counted).
        self._scanned = origin + fault.after

    def find(self, position: int, chunk: bytes) -> Optional[int]:
        """The trigger point's stream offset once known (``chunk`` starts at ``position``)."""
        if self.point is not None or self.pattern is None:
            return self.point
        base = position - len(self._tail)
        data = self._tail + chunk
        for match in self.pattern.finditer(data, max(self._scanned - base, 0)):
            self.matches += 1
            self._scanned = base + match.end()
            if self.matches == self.fault.nth:
                self.point = base + match.start() + self.fault.skip
                return self.point
        # A match may begin in the last bytes and end in the next chunk.
        self._tail = data[-_OVERLAP:]
        self._scanned = max(self._scanned, base + len(data) - len(self._tail))
        return None


class _Connection:
    """One relayed connection: two sockets and a pipe thread per direction."""

    def __init__(
        self, proxy: FaultProxy, number: int, client: socket.socket, server: socket.socket
    ) -> None:
        self.proxy = proxy
        self.number = number
        self.client = client
        self.server = server
        self.closed = threading.Event()
        self.bytes = {UP: 0, DOWN: 0}
        # Per direction: the trickle under way, and how many bytes it sent.
        self._trickle: Dict[str, Optional[Fault]] = {UP: None, DOWN: None}
        self._trickled = {UP: 0, DOWN: 0}
        self.threads = [
            threading.Thread(target=self._pipe, args=(UP, client, server), daemon=True),
            threading.Thread(target=self._pipe, args=(DOWN, server, client), daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self, reset: bool = False) -> None:
        """Break both sides at once (idempotent)."""
        if self.closed.is_set():
            return
        self.closed.set()
        for s in (self.client, self.server):
            try:
                if reset:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def _send(self, destination: socket.socket, data: bytes) -> bool:
        """Send all of ``data`` unless the connection closes; False if it did."""
        view = memoryview(data)
        while view:
            if self.closed.is_set():
                return False
            try:
                sent = destination.send(view)
            except TimeoutError:
                continue
            except OSError:
                return False
            view = view[sent:]
        return True

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the connection closes; False if it did."""
        return not self.closed.wait(seconds)

    def _pipe(self, direction: str, source: socket.socket, destination: socket.socket) -> None:
        generation, triggers = self.proxy._triggers_for(direction, [], 0)
        try:
            while not self.closed.is_set():
                try:
                    chunk = source.recv(1 << 16)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                position = self.bytes[direction]
                self.bytes[direction] += len(chunk)
                if self.proxy.generation != generation:
                    generation, triggers = self.proxy._triggers_for(direction, triggers, position)
                # The trigger points inside this chunk, nearest first.
                due: List[tuple[int, _Trigger]] = []
                for trigger in triggers:
                    point = trigger.find(position, chunk)
                    if point is not None and point < position + len(chunk):
                        due.append((max(point, position), trigger))
                due.sort(key=lambda item: item[0])
                offset = 0
                for point, trigger in due:
                    triggers.remove(trigger)
                    if not self._relay(direction, destination, chunk[offset : point - position]):
                        return
                    offset = point - position
                    fault = trigger.fault
                    if not self.proxy._fire(fault, self, direction, point):
                        continue
                    if fault.mode == CUT:
                        self.close(fault.reset)
                        return
                    if fault.mode == STALL:
                        if not self._wait(fault.seconds):
                            return
                    else:
                        self._trickle[direction], self._trickled[direction] = fault, 0
                if not self._relay(direction, destination, chunk[offset:]):
                    return
        finally:
            self.close()

    def _relay(self, direction: str, destination: socket.socket, data: bytes) -> bool:
        """Send ``data``, a byte at a time while a trickle is on; False once closed."""
        offset = 0
        while (fault := self._trickle[direction]) is not None and offset < len(data):
            if fault.length is not None and self._trickled[direction] >= fault.length:
                self._trickle[direction] = None
                break
            if not self._send(destination, data[offset : offset + 1]):
                return False
            offset += 1
            self._trickled[direction] += 1
            if fault.delay and not self._wait(fault.delay):
                return False
        return self._send(destination, data[offset:])


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target_port``, with `Fault`\\s.

    ``arm()`` faults, ``disarm()`` them all (the proxy then relays
    faithfully), ``cut_all()`` breaks the live connections now; ``close()``
    stops the proxy and waits (bounded) for its threads.  ``events`` says
    what happened, one string per fault fired.
    """

    def __init__(self, target_port: int, *, socket_timeout: float = POLL) -> None:
        self.target = ("127.0.0.1", target_port)
        self.socket_timeout = socket_timeout
        self.events: List[str] = []
        self.connections = 0
        #: Incremented when faults are armed or disarmed: pipes look again.
        self.generation = 0
        self._faults: List[Fault] = []
        self._live: List[_Connection] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(POLL)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- control -------------------------------------------------------------

    def arm(self, *faults: Fault) -> None:
        """Add faults; they apply to live and future connections."""
        with self._lock:
            self._faults.extend(faults)
            self.generation += 1

    def disarm(self) -> None:
        """Forget every fault not fired yet (trickles under way go on)."""
        with self._lock:
            self._faults.clear()
            self.generation += 1

    @property
    def armed(self) -> List[Fault]:
        with self._lock:
            return list(self._faults)

    def cut_all(self, reset: bool = False) -> int:
        """Break every live connection now; return how many."""
        with self._lock:
            live, self._live = self._live, []
        for connection in live:
            connection.close(reset)
        if live:
            self._log(f"cut_all: {len(live)} connection(s)")
        return len(live)

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, break every connection, wait for the threads."""
        self._closed.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            live, self._live = self._live, []
        for connection in live:
            connection.close()
        deadline = time.monotonic() + timeout
        self._acceptor.join(max(deadline - time.monotonic(), 0))
        for connection in live:
            for thread in connection.threads:
                thread.join(max(deadline - time.monotonic(), 0))

    # -- internals -----------------------------------------------------------

    def _log(self, text: str) -> None:
        with self._lock:
            self.events.append(text)

    def _triggers_for(
        self, direction: str, known: List[_Trigger], origin: int
    ) -> tuple[int, List[_Trigger]]:
        """The generation, and triggers for the armed faults of ``direction``:
        those of ``known`` still armed, new ones from ``origin`` on."""
        with self._lock:
            faults = [f for f in self._faults if f.direction == direction]
            generation = self.generation
        kept = {id(t.fault): t for t in known}
        return generation, [kept.get(id(f)) or _Trigger(f, origin) for f in faults]

    def _fire(self, fault: Fault, connection: _Connection, direction: str, point: int) -> bool:
        """Whether ``fault`` fires now (still armed); record it if so."""
        with self._lock:
            if fault not in self._faults:
                return False
            if not fault.every:
                self._faults.remove(fault)
            fault.fired += 1
            self.events.append(
                f"{fault.mode} {direction} at byte {point} of connection {connection.number}"
            )
        return True

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.settimeout(self.socket_timeout)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closed.is_set():
                    client.close()
                    server.close()
                    return
                self.connections += 1
                connection = _Connection(self, self.connections, client, server)
                self._live = [c for c in self._live if not c.closed.is_set()]
                self._live.append(connection)
            connection.start()

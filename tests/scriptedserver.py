# -*- test-case-name: tests.test_hostile -*-
"""A scripted, possibly hostile IMAP server for end-to-end tests of the real command.

Test tooling, not product code.  It is the in-memory Dovecot look-alike of
`tests.fakeserver` (QRESYNC, LIST-STATUS, MULTIAPPEND, UIDPLUS, ESEARCH,
...) with its mail kept in a pickle file between runs, plus one fault
injected where a scenario says.  Run as a script it serves one connection:

- on stdin/stdout, as the ``command`` of a ``type = tunnel`` side::

      python tests/scriptedserver.py --state STORE.pickle --scenario JSON

- or on 127.0.0.1 (``--listen PORTFILE``: the port is written there once
  listening), for what needs a socket (STARTTLS).

The scenario is a JSON object, every key optional (strings are bytes in
Latin-1; ``{tag}`` in them stands for the tag of the command hit)::

    {"before_greeting": "...",   # sent before the greeting
     "greeting": "...",          # sent instead of the usual greeting
     "prelogin": ["IMAP4rev1", "STARTTLS"],  # not PREAUTH: OK greeting, LOGIN
     "at": "UID FETCH",          # the command to hit (name as sent, upper case)
     "skip": 0,                  # occurrences of it to let through first
     "times": 1,                 # how many to hit (0: every one)
     "send": "...",              # written when it is hit, before anything else
     "fill": ["...", 1000],      # then this, repeated so many times
     "action": "execute",        # then: execute | close | hang | none
     "rewrite": [["RE", "REPL"]],# regex substitutions on its responses
     "after": "..."}             # written after its responses

``action``: ``execute`` runs the command as usual (its responses
rewritten), ``close`` closes the connection, ``hang`` stops answering
(without reading further), ``none`` answers nothing but goes on with the
next command.  ``--log FILE`` appends the name of each command received,
one a line.  The store is saved when the connection ends, whatever
happened, so that a test can check what the hostile server holds.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import socket
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.fakeserver import FakeIMAPServer, FaultPlan, MailStore

__all__ = ["Scenario", "ScriptedServer", "load_store", "save_store", "script_command"]

SCRIPT = os.path.abspath(__file__)
_TAG_AND_NAME = re.compile(rb"([^\x00-\x20\x7f(){%*\"\\+]+) ((?:UID )?[A-Za-z][A-Za-z0-9-]*)")


def save_store(path: str, store: MailStore) -> None:
    """Write ``store`` (without its connections and hooks) to ``path``."""
    servers, faults = store.servers, store.faults
    store.servers, store.faults = [], FaultPlan()
    try:
        data = pickle.dumps(store)
    finally:
        store.servers, store.faults = servers, faults
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        f.write(data)
    os.replace(temporary, path)


def load_store(path: str) -> MailStore:
    """The store saved at ``path``."""
    with open(path, "rb") as f:
        store = pickle.load(f)
    assert isinstance(store, MailStore)
    return store


def script_command(state: str, scenario: Optional[Dict[str, Any]] = None, log: str = "") -> str:
    """The tunnel ``command`` line that serves ``state`` with ``scenario``."""
    words = [sys.executable, SCRIPT, "--state", state]
    if scenario:
        words += ["--scenario", json.dumps(scenario)]
    if log:
        words += ["--log", log]
    # The config parser keeps the line as is: quote for /bin/sh -c.
    return " ".join(_shell_quote(w) for w in words)


def _shell_quote(word: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./=:,+-]+", word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def _bytes(text: Optional[str]) -> bytes:
    return (text or "").encode("latin-1")


class Scenario:
    """The parsed JSON scenario: where to strike and what to do."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        self.before_greeting = _bytes(spec.get("before_greeting"))
        self.greeting: Optional[bytes] = (
            _bytes(spec["greeting"]) if spec.get("greeting") is not None else None
        )
        self.prelogin: Optional[List[bytes]] = (
            [_bytes(c) for c in spec["prelogin"]] if spec.get("prelogin") is not None else None
        )
        self.at = _bytes(spec.get("at")).upper()
        self.skip = int(spec.get("skip", 0))
        self.times = int(spec.get("times", 1))
        self.send = _bytes(spec.get("send"))
        self.action = str(spec.get("action", "execute"))
        self.rewrite: List[Tuple[re.Pattern[bytes], bytes]] = [
            (re.compile(_bytes(pattern)), _bytes(replacement))
            for pattern, replacement in spec.get("rewrite", [])
        ]
        self.after = _bytes(spec.get("after"))
        text, count = spec.get("fill", ["", 0])
        self.fill = _bytes(text) * int(count)
        self.hits = 0
        self.seen = 0

    def strikes(self, name: bytes) -> bool:
        """Whether this command (the next of its name) is hit."""
        if not self.at or name != self.at:
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.times and self.hits >= self.times:
            return False
        self.hits += 1
        return True


class ScriptedServer(FakeIMAPServer):
    """`FakeIMAPServer` with a scenario's fault injected."""

    def __init__(self, store: MailStore, scenario: Scenario, log: str = "") -> None:
        prelogin = scenario.prelogin
        super().__init__(
            store,
            preauth=prelogin is None,
            prelogin_capabilities=prelogin,
            users={"user": "secret"},
        )
        self.scenario = scenario
        self.log_path = log
        self.hung = False
        self._rewriting = False

    def connectionMade(self) -> None:
        if self.scenario.before_greeting:
            self._write(self.scenario.before_greeting)
        if self.scenario.greeting is not None:
            self.store.servers.append(self)
            self._write(self.scenario.greeting)
            return
        super().connectionMade()

    def _write(self, data: bytes) -> None:
        if self._rewriting:
            for pattern, replacement in self.scenario.rewrite:
                data = pattern.sub(replacement, data)
        super()._write(data)

    def _run(self, raw: bytes) -> None:
        match = _TAG_AND_NAME.match(raw)
        tag, name = (match.group(1), match.group(2).upper()) if match else (b"*", b"")
        name = b" ".join(name.split())
        if self.log_path:
            with open(self.log_path, "ab") as f:
                f.write(name + b"\n")
        if not self.scenario.strikes(name):
            if name == b"STARTTLS":
                self._write(tag + b" BAD TLS is not available here\r\n")
                return
            super()._run(raw)
            return
        scenario = self.scenario
        if scenario.send or scenario.fill:
            self._write(scenario.send.replace(b"{tag}", tag) + scenario.fill)
        if scenario.action == "close":
            self._close()
            return
        if scenario.action == "hang":
            self.hung = True
            self._hung = True
            return
        if scenario.action == "execute":
            if name == b"STARTTLS":
                # One write: the injection arrives with the OK, in clear text.
                after = scenario.after.replace(b"{tag}", tag)
                self._write(tag + b" OK Begin TLS negotiation now.\r\n" + after)
                return
            else:
                self._rewriting = True
                try:
                    super()._run(raw)
                finally:
                    self._rewriting = False
        if scenario.after:
            self._write(scenario.after.replace(b"{tag}", tag))


class _FileTransport:
    """Just what `FakeIMAPServer` calls on its transport, over two descriptors."""

    def __init__(self, out: Callable[[bytes], None]) -> None:
        self._out = out
        self.closed = False

    def write(self, data: bytes) -> None:
        if not self.closed:
            try:
                self._out(data)
            except OSError:
                self.closed = True

    def loseConnection(self) -> None:
        self.closed = True

    abortConnection = loseConnection


def serve(server: ScriptedServer, read: Callable[[], bytes], out: Callable[[bytes], None]) -> None:
    """Feed ``server`` what ``read`` returns until either side closes."""
    transport = _FileTransport(out)
    server.makeConnection(transport)  # type: ignore[arg-type]
    while not transport.closed:
        if server.hung:
            # Keep the connection open, silent, until the client gives up.
            try:
                if not read():
                    break
            except OSError:
                break
            continue
        try:
            data = read()
        except OSError:
            # The client reset the connection: it gave up on us.
            break
        if not data:
            break
        server.dataReceived(data)
    server.connectionLost()


def _write_all(fd: int) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return write


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state", required=True, help="the store's pickle file")
    parser.add_argument("--scenario", default="{}", help="the fault, as JSON")
    parser.add_argument("--log", default="", help="append each command's name here")
    parser.add_argument("--listen", default="", help="serve on 127.0.0.1; write the port here")
    args = parser.parse_args(argv)
    store = load_store(args.state) if os.path.exists(args.state) else MailStore(separator=b".")
    server = ScriptedServer(store, Scenario(json.loads(args.scenario)), args.log)
    try:
        if args.listen:
            with socket.create_server(("127.0.0.1", 0)) as listener:
                temporary = args.listen + ".tmp"
                with open(temporary, "w", encoding="ascii") as f:
                    f.write(str(listener.getsockname()[1]))
                os.replace(temporary, args.listen)
                listener.settimeout(60)
                connection, _ = listener.accept()
            with connection:
                serve(server, lambda: connection.recv(65536), connection.sendall)
        else:
            serve(server, lambda: os.read(0, 65536), _write_all(1))
    finally:
        save_store(args.state, store)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The fuzzers' long run: ``tests/torture/fuzz.py --seconds 600`` or ``--cases 1000000``.

Two targets, each under two engines:

* ``parser``: ``imapsync.imap._parser.ResponseParser`` fed the input in
  chunks (sizes and limits taken from the input), every response drained;
* ``config``: the configuration loader (``load_config``'s parse and
  checks, on the input as the file's bytes, mode 0600 or 0644).

Engines: hypothesis with structure-aware generators (IMAP responses built
from tokens, literals and response codes; config lines from the keys and
values of ``tests.test_config``), and atheris (libFuzzer, coverage guided,
with a dictionary of IMAP and config words) when it is installed (the
``fuzz`` extra: ``pip install -e '.[fuzz]'``).  Anything but the project's
own ``ProtocolError`` (parser) or ``ConfigError`` (config) escaping is a
crash; crashes are recorded (one per exception type and place) and the run
goes on.  Prints the cases tried and the crashes found per target and
engine; exits 1 if any crash was found.  The short variants run in
``make check`` (``tests.test_imap_parser``, ``tests.test_config``); trial
collects only ``test_*`` modules, so not this one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

REPOSITORY = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPOSITORY))

TARGETS = ("parser", "config")
# Words for libFuzzer's dictionary (and the generators).
IMAP_WORDS = [
    "* ",
    "+ ",
    "A1 ",
    "OK",
    "NO",
    "BAD",
    "BYE",
    "PREAUTH",
    "CAPABILITY",
    "FLAGS",
    "LIST",
    "LSUB",
    "STATUS",
    "ESEARCH",
    "SEARCH",
    "VANISHED",
    "(EARLIER)",
    "ENABLED",
    "EXISTS",
    "EXPUNGE",
    "RECENT",
    "FETCH",
    "UID",
    "MODSEQ",
    "INTERNALDATE",
    "RFC822.SIZE",
    "BODY[]",
    "BODY[]<0>",
    "BINARY[]",
    "BODY[HEADER]",
    "RFC822",
    "ENVELOPE",
    "NIL",
    "\\Seen",
    "\\Noselect",
    "\\HasChildren",
    "APPENDUID",
    "COPYUID",
    "UIDVALIDITY",
    "UIDNEXT",
    "HIGHESTMODSEQ",
    "NOMODSEQ",
    "PERMANENTFLAGS",
    "BADCHARSET",
    "CHILDINFO",
    "OLDNAME",
    "MESSAGES",
    "UNSEEN",
    "ALL",
    "MIN",
    "MAX",
    "COUNT",
    "TAG",
    "QRESYNC",
    "CONDSTORE",
    "COMPRESS=DEFLATE",
    "{0}\r\n",
    "{5}\r\n",
    "{5+}\r\n",
    "~{3}\r\n",
    "\r\n",
    '"',
    "\\\\",
    "1:*",
    "4294967295",
    "18446744073709551615",
    "17-Jul-1996 02:44:25 -0700",
    "INBOX",
]
CONFIG_WORDS = [
    "[local]",
    "[remote]",
    "type",
    "imaps",
    "imap",
    "tunnel",
    "command",
    "host",
    "port",
    "username",
    "password",
    "database",
    "logfile",
    "log-prefix",
    "%?n?%?m?%n(%m)&%n?: ?",
    "list-mailbox",
    "list-select-opts",
    "ignore-mailbox",
    "list-reference",
    "proxy",
    "socks5h://u:p@h:1080",
    "STARTTLS",
    "auth",
    "compress",
    "null-stderr",
    "SSL_fingerprint",
    "sha256$",
    "SSL_verify",
    "SSL_CAfile",
    "SSL_hostname",
    "SSL_protocol_min",
    "TLSv1.2",
    "SSL_cipherlist",
    "YES",
    "NO",
    " = ",
    "\n",
    "#",
    ";",
    "\\0",
    '"\\x41"',
    "[::1]",
]


# -- targets ----------------------------------------------------------------


def parse_imap(data: bytes) -> None:
    """Feed ``data`` to a ResponseParser: the first byte picks the chunk size and limits."""
    from imapsync.imap._parser import ResponseParser
    from imapsync.imap.errors import ProtocolError

    head = data[0] if data else 0
    data = data[1:]
    parser = ResponseParser(
        **({"max_line": 64 + head * 4, "max_literal": 32 + head * 8} if head & 1 else {})
    )
    if head & 2:
        parser.spool_at = 16
    parser.keep_text = bool(head & 4)
    chunk = (head >> 3) + 1 if head & 0x80 else len(data) or 1
    try:
        for start in range(0, len(data), chunk):
            parser.feed(data[start : start + chunk])
            while parser.next_response() is not None:
                pass
        if head & 0x40:
            parser.take_remaining()
    except ProtocolError as e:
        if not str(e):
            raise AssertionError("ProtocolError without a message") from e


_CONFIG_HOME = tempfile.mkdtemp(prefix="imapsync-fuzz-")


def load_config_bytes(data: bytes) -> None:
    """The checks ``load_config`` runs on a file holding ``data``."""
    from imapsync.config import ConfigError, _Loader

    loader = _Loader(os.path.join(_CONFIG_HOME, "config"), {"HOME": _CONFIG_HOME})
    try:
        loader.parse(data)
        config = loader.config(0o644 if data[-1:] == b"\n" else 0o600)
    except ConfigError as e:
        if not str(e):
            raise AssertionError("ConfigError without a message") from e
        return
    if not os.path.isabs(config.database):
        raise AssertionError(f"relative database {config.database!r}")


TARGET_FUNCTIONS: Dict[str, Callable[[bytes], None]] = {
    "parser": parse_imap,
    "config": load_config_bytes,
}


class Crashes:
    """Crashes by (exception type, innermost place in imapsync), with the shortest input."""

    def __init__(self) -> None:
        self.found: Dict[str, Tuple[str, bytes]] = {}
        self.total = 0

    def record(self, error: BaseException, data: bytes) -> None:
        self.total += 1
        frames = traceback.extract_tb(error.__traceback__)
        ours = [f for f in frames if "/imapsync/" in f.filename] or frames
        place = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
        key = f"{type(error).__name__} at {place}"
        known = self.found.get(key)
        if known is None or len(data) < len(known[1]):
            self.found[key] = (f"{type(error).__name__}: {error}"[:300], data)

    def as_json(self) -> Dict[str, Any]:
        return {
            "total": self.total,
            "unique": {
                key: {"error": text, "input": data[:2000].decode("latin-1")}
                for key, (text, data) in self.found.items()
            },
        }


# -- hypothesis -------------------------------------------------------------


def imap_responses() -> SearchStrategy[bytes]:
    """A strategy: byte streams of IMAP responses, mostly well formed, some mangled."""
    from hypothesis import strategies as st

    number = st.one_of(
        st.integers(0, 100).map(str),
        st.sampled_from(["0", "4294967295", "4294967296", "18446744073709551616", "-1", "01"]),
    )
    atom = st.one_of(
        st.sampled_from([w.strip() for w in IMAP_WORDS if w.strip()]),
        st.text("abcXYZ\\$.-_*%[]<>0123456789", min_size=1, max_size=8),
    )
    quoted = st.text(max_size=12).map(
        lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'
    ) | st.text(max_size=8).map(lambda t: '"' + t + '"')

    def literal(body: bytes, skew: int, plus: str) -> str:
        return f"{{{max(len(body) + skew, 0)}{plus}}}\r\n" + body.decode("latin-1")

    literals = st.builds(
        literal,
        st.binary(max_size=40),
        st.sampled_from([0, 0, 0, 0, -1, 1, 3]),
        st.sampled_from(["", "+"]),
    )
    scalar = st.one_of(atom, number, quoted, literals, st.just("NIL"))
    values = st.recursive(
        scalar,
        lambda inner: st.lists(inner, max_size=5).map(lambda xs: "(" + " ".join(xs) + ")"),
        max_leaves=12,
    )
    code = st.builds(
        lambda name, args: "[" + " ".join([name, *args]) + "] ",
        st.sampled_from(
            [
                "APPENDUID",
                "COPYUID",
                "UIDVALIDITY",
                "UIDNEXT",
                "HIGHESTMODSEQ",
                "NOMODSEQ",
                "CAPABILITY",
                "PERMANENTFLAGS",
                "BADCHARSET",
                "READ-WRITE",
                "ALERT",
                "X",
            ]
        ),
        st.lists(st.one_of(number, st.just("1:3,5"), st.just("(\\Seen \\*)"), atom), max_size=3),
    )
    status = st.builds(
        lambda tag, cond, c, text: f"{tag} {cond} {c}{text}",
        st.sampled_from(["*", "A1", "A2", "+"]),
        st.sampled_from(["OK", "NO", "BAD", "BYE", "PREAUTH"]),
        st.one_of(st.just(""), code),
        st.text(max_size=15),
    )
    fetch_item = st.builds(
        lambda name, value: f"{name} {value}",
        st.sampled_from(
            [
                "UID",
                "MODSEQ",
                "FLAGS",
                "INTERNALDATE",
                "RFC822.SIZE",
                "BODY[]",
                "BODY[]<0>",
                "BINARY[]",
                "RFC822",
                "ENVELOPE",
                "X-GM-LABELS",
            ]
        ),
        values,
    )
    fetch = st.builds(
        lambda n, items: f"* {n} FETCH (" + " ".join(items) + ")",
        number,
        st.lists(fetch_item, max_size=5),
    )
    data = st.builds(
        lambda n, word, rest: f"* {n}{word} " + " ".join(rest),
        st.sampled_from(["", "1 ", "23 "]),
        st.sampled_from(
            [
                "CAPABILITY",
                "FLAGS",
                "LIST",
                "LSUB",
                "STATUS",
                "ESEARCH",
                "SEARCH",
                "VANISHED",
                "ENABLED",
                "EXISTS",
                "EXPUNGE",
                "RECENT",
                "NAMESPACE",
                "ID",
            ]
        ),
        st.lists(values, max_size=6),
    )
    line = st.one_of(status, fetch, data, st.text(max_size=30))
    stream = st.lists(line, min_size=1, max_size=6).map(
        lambda lines: "".join(x + "\r\n" for x in lines).encode("utf-8", "surrogatepass")
    )

    def mangle(raw: bytes, cuts: List[Tuple[int, int, bytes]]) -> bytes:
        out = bytearray(raw)
        for pos, length, insert in cuts:
            pos %= len(out) + 1
            out[pos : pos + length] = insert
        return bytes(out)

    mangled = st.builds(
        mangle,
        stream,
        st.lists(
            st.tuples(st.integers(0, 1 << 16), st.integers(0, 3), st.binary(max_size=3)),
            max_size=3,
        ),
    )
    return st.tuples(st.integers(0, 255), st.one_of(stream, stream, mangled)).map(
        lambda pair: bytes([pair[0]]) + pair[1]
    )


def config_files() -> SearchStrategy[bytes]:
    """A strategy: config files from tests.test_config's lines, sometimes raw bytes."""
    from hypothesis import strategies as st

    from tests.test_config import _LINES

    text = st.lists(_LINES, max_size=16).map(
        lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
    )
    return st.one_of(text, text, text, st.binary(max_size=300))


def run_hypothesis(target: str, cases: Optional[int], seconds: Optional[float]) -> Dict[str, Any]:
    """Generate and run cases until ``cases`` or ``seconds``, in batches."""
    from hypothesis import HealthCheck, Phase, given, settings

    function = TARGET_FUNCTIONS[target]
    strategy = imap_responses() if target == "parser" else config_files()
    crashes = Crashes()
    tried = 0
    started = time.monotonic()
    # Small batches: hypothesis makes a few hundred structured cases a second.
    batch = 500

    @settings(
        max_examples=batch,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def one(data: bytes) -> None:
        nonlocal tried
        tried += 1
        try:
            function(data)
        except Exception as e:  # a crash: recorded, not raised (the run goes on)
            crashes.record(e, data)

    while True:
        if cases is not None and tried >= cases:
            break
        if seconds is not None and time.monotonic() - started >= seconds:
            break
        one()
    return {
        "engine": "hypothesis",
        "target": target,
        "cases": tried,
        "seconds": round(time.monotonic() - started, 1),
        "crashes": crashes.as_json(),
    }


# -- atheris ----------------------------------------------------------------


def atheris_child(target: str, results: Path) -> None:
    """Run under atheris (this process never returns); crashes go to ``results``."""
    import atheris

    with atheris.instrument_imports(include=["imapsync"]):
        import imapsync.config  # noqa: F401
        import imapsync.imap._parser  # noqa: F401
    function = TARGET_FUNCTIONS[target]
    crashes = Crashes()

    def one(data: bytes) -> None:
        try:
            function(data)
        except Exception as e:
            before = set(crashes.found)
            crashes.record(e, data)
            if set(crashes.found) != before or crashes.total % 100 == 1:
                results.write_text(json.dumps(crashes.as_json()))

    atheris.Setup(sys.argv[:1] + sys.argv[sys.argv.index("--") + 1 :], one)
    atheris.Fuzz()


def run_atheris(
    target: str, cases: Optional[int], seconds: Optional[float], workdir: Path
) -> Dict[str, Any]:
    """libFuzzer in a child process; its "Done N runs" line gives the count."""
    dictionary = workdir / f"{target}.dict"
    words = IMAP_WORDS if target == "parser" else CONFIG_WORDS
    dictionary.write_text(
        "".join(
            '"'
            + "".join(c if c.isprintable() and c not in '"\\' else f"\\x{ord(c):02x}" for c in w)
            + '"\n'
            for w in words
        )
    )
    corpus = workdir / f"corpus-{target}"
    corpus.mkdir(exist_ok=True)
    results = workdir / f"crashes-{target}.json"
    flags = [f"-dict={dictionary}", "-timeout=20", "-rss_limit_mb=4096", "-max_len=4096"]
    if cases is not None:
        flags.append(f"-runs={cases}")
    if seconds is not None:
        flags.append(f"-max_total_time={max(int(seconds), 1)}")
    argv = [
        sys.executable,
        __file__,
        "--atheris-child",
        target,
        str(results),
        "--",
        *flags,
        str(corpus),
    ]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=REPOSITORY, capture_output=True, text=True, errors="replace")
    elapsed = time.monotonic() - started
    done = re.findall(r"Done (\d+) runs in (\d+) second", proc.stderr)
    progress = re.findall(r"#(\d+)\s", proc.stderr)
    tried = int(done[-1][0]) if done else int(progress[-1]) if progress else 0
    crashes: Dict[str, Any] = (
        json.loads(results.read_text()) if results.exists() else {"total": 0, "unique": {}}
    )
    if proc.returncode != 0:
        # libFuzzer stopped: a timeout, out of memory or a crash in C.
        crashes["total"] = int(crashes["total"]) + 1
        crashes["unique"][f"libFuzzer exit {proc.returncode}"] = {
            "error": proc.stderr[-3000:],
            "input": "",
        }
    return {
        "engine": "atheris",
        "target": target,
        "cases": tried,
        "seconds": round(elapsed, 1),
        "corpus": len(list(corpus.iterdir())),
        "crashes": crashes,
    }


# -- main -------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--atheris-child":
        atheris_child(sys.argv[2], Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--cases", type=int, help="cases per target and engine")
    budget.add_argument("--seconds", type=float, help="total time, shared out (default 60)")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--engines", default="hypothesis,atheris")
    parser.add_argument("--json", type=Path, help="write the figures there too")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    engines = [e for e in args.engines.split(",") if e]
    if "atheris" in engines:
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed (pip install -e '.[fuzz]'): hypothesis only")
            engines.remove("atheris")
    jobs = [(e, t) for e in engines for t in targets]
    # The time: three quarters to atheris (fast, coverage guided) when present.
    weights = {"atheris": 3.0, "hypothesis": 1.0 if "atheris" in engines else 3.0}
    total_weight = sum(weights[e] for e, _ in jobs) or 1.0
    results: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="imapsync-fuzz-") as workdir:
        for engine, target in jobs:
            seconds = (
                None if args.cases else (args.seconds or 60.0) * weights[engine] / total_weight
            )
            if engine == "hypothesis":
                result = run_hypothesis(target, args.cases, seconds)
            else:
                result = run_atheris(target, args.cases, seconds, Path(workdir))
            crashes = result["crashes"]
            assert isinstance(crashes, dict)
            print(
                f"{engine:10} {target:6}: {result['cases']:>9} cases in {result['seconds']:>6} s,"
                f" crashes {crashes['total']} ({len(crashes['unique'])} distinct)",
                flush=True,
            )
            for key, found in crashes["unique"].items():
                print(f"    {key}: {found['error']}\n      input: {found['input'][:300]!r}")
            results.append(result)
    total_cases = sum(int(r["cases"]) for r in results)
    total_crashes = sum(int(r["crashes"]["total"]) for r in results)
    print(f"cases: {total_cases}")
    print(f"crashes: {total_crashes}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())

# -*- test-case-name: tests.test_config -*-
"""Tests for imapsync.config: the INI dialect, every key, XDG paths, TLS
settings checked at load time, and log-prefix expansion (compared with
interimap's own Perl code when it is installed)."""

from __future__ import annotations

import functools
import os
import subprocess
from typing import Callable, Dict, List, Optional, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from imapsync.config import (
    DEFAULT_LOG_PREFIX,
    Config,
    ConfigError,
    ConfigFileMissingError,
    ProxySettings,
    _log_prefix_problem,
    data_directory,
    format_log_prefix,
    load_config,
    mailbox_to_wire,
    resolve_config_path,
)
from imapsync.imap.connect import ServerSettings
from imapsync.imap.tls import TLSSettings, format_fingerprint, spki_fingerprint
from imapsync.imap.utf7 import decode_mailbox
from tests import certs

# Both sides, nothing else: a tunnel that needs no TLS, and a remote server.
MINIMAL = """\
[local]
type = tunnel
command = imap
[remote]
host = imap.example.net
"""


class ConfigFileTestCase(SynchronousTestCase):
    """Writes configuration files in a fake home directory."""

    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.environ: Dict[str, str] = {"HOME": self.home}

    def write(self, text: str, name: str = "config", mode: int = 0o600) -> str:
        path = os.path.join(self.home, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def load(self, text: str, mode: int = 0o600) -> Config:
        return load_config(self.write(text, mode=mode), self.environ)

    def load_error(self, text: str, line: Optional[int], *fragments: str) -> ConfigError:
        """Loading C{text} fails on C{line}; the message holds each fragment."""
        path = self.write(text)
        error = self.assertRaises(ConfigError, load_config, path, self.environ)
        self.assertNotIsInstance(error, ConfigFileMissingError)
        self.assertEqual(error.exit_code, 78)
        self.assertEqual(error.line, line, str(error))
        prefix = f"{path} line {line}: " if line is not None else f"{path}: "
        self.assertTrue(str(error).startswith(prefix), str(error))
        for fragment in fragments:
            self.assertIn(fragment, str(error))
        return error


class InterimapFilesTests(ConfigFileTestCase):
    """Configuration files as interimap users have them load unchanged."""

    def test_tunnel_and_imaps(self) -> None:
        """The man page's example: a local Dovecot through a tunnel, a remote
        server over imaps."""
        config = self.load(
            """\
# ~/.config/interimap/config
#logfile = /var/log/interimap.log

[local]
type = tunnel
command = /usr/lib/dovecot/imap -c ~/.dovecot/config
null-stderr = YES

[remote]
# type = imaps
host = imap.example.net
username = guilhem
password = xxxxxxxxxxxxxxxx
"""
        )
        self.assertEqual(
            config.local.server,
            ServerSettings(
                name="local",
                type="tunnel",
                host="localhost",
                command="/usr/lib/dovecot/imap -c ~/.dovecot/config",
                null_stderr=True,
                compress=False,
            ),
        )
        self.assertEqual(
            config.remote.server,
            ServerSettings(
                name="remote",
                type="imaps",
                host="imap.example.net",
                username="guilhem",
                password="xxxxxxxxxxxxxxxx",
                compress=True,
                tls=TLSSettings(hostname="imap.example.net"),
            ),
        )
        self.assertEqual(config.remote.server.effective_port, 993)
        self.assertEqual(
            config.database,
            os.path.join(self.home, ".local/share/imapsync/imap.example.net.db"),
        )
        self.assertIsNone(config.logfile)
        self.assertEqual(config.log_prefix, DEFAULT_LOG_PREFIX)
        self.assertEqual(config.list_mailbox, ())
        self.assertIsNone(config.ignore_mailbox)
        self.assertEqual(config.warnings, ())

    def test_starttls_pinned_and_filtered(self) -> None:
        """STARTTLS with pinned keys, a CA file, a list-reference and the
        mailbox list options."""
        ca = certs.make_ca()
        cafile = self.write(ca.cert_pem.decode("ascii"), name="ca.pem")
        pin1 = format_fingerprint("sha256", spki_fingerprint(ca.certificate))
        pin2 = "sha1$" + "ab" * 20
        config = self.load(
            f"""\
logfile = /var/log/interimap/work.log
log-prefix = %?n?[%n]? %?m?%m: ?
list-mailbox = INBOX "Sent Items" Entw&APw-rfe "Archives\\0%"
list-select-opts = SUBSCRIBED
ignore-mailbox = ^(?:Trash|virtual)(?:\\x00|$)

[local]
type = tunnel
command = doveadm exec imap
list-reference = work/

[remote]
type = imap
host = mail.example.com
port = 143
STARTTLS = yes
auth = login
username = jdoe@example.com
password = s3cret with spaces
compress = NO
SSL_CAfile = {cafile}
SSL_fingerprint = {pin1} {pin2}
SSL_protocol_min = TLSv1.2
SSL_cipherlist = HIGH:!aNULL
"""
        )
        remote = config.remote.server
        self.assertEqual(
            (remote.type, remote.host, remote.port, remote.starttls, remote.auth, remote.compress),
            ("imap", "mail.example.com", 143, True, ("LOGIN",), False),
        )
        self.assertEqual(remote.password, "s3cret with spaces")
        self.assertEqual(
            remote.tls,
            TLSSettings(
                hostname="mail.example.com",
                cafile=cafile,
                fingerprints=(pin1, pin2),
                protocol_min="TLSv1.2",
                cipherlist="HIGH:!aNULL",
            ),
        )
        self.assertEqual(config.local.list_reference, b"work/")
        self.assertEqual(config.remote.list_reference, b"")
        self.assertEqual(config.logfile, "/var/log/interimap/work.log")
        self.assertEqual(config.log_prefix, "%?n?[%n]? %?m?%m: ?")
        self.assertEqual(
            config.list_mailbox, (b"INBOX", b"Sent Items", b"Entw&APw-rfe", b"Archives\0%")
        )
        self.assertEqual(config.list_select_opts, (b"SUBSCRIBED",))
        self.assertTrue(config.ignores(b"Trash"))
        self.assertTrue(config.ignores(b"virtual\0all"))
        self.assertFalse(config.ignores(b"Trashcan"))
        self.assertEqual(
            config.database, os.path.join(self.home, ".local/share/imapsync/mail.example.com.db")
        )

    def test_shared_defaults(self) -> None:
        """Keys in the default section reach both sides; the deprecated
        SSL_protocols still works."""
        config = self.load(
            """\
; shared by both servers
database = personal.db
username = me
password = hunter2
SSL_protocols = !SSLv2 !SSLv3 !TLSv1 !TLSv1.1
SSL_verify = NO

[local]
type = imap
host = [127.0.0.1]
STARTTLS = NO

[remote]
host = imap.example.org
port = imaps
proxy = socks5h://tor:pw@localhost:9050
"""
        )
        local, remote = config.local.server, config.remote.server
        self.assertEqual((local.username, local.password), ("me", "hunter2"))
        self.assertEqual((remote.username, remote.password), ("me", "hunter2"))
        self.assertIsNone(local.tls)
        self.assertEqual(local.host, "[127.0.0.1]")
        self.assertEqual(remote.port, 993)
        assert remote.tls is not None
        self.assertFalse(remote.tls.verify)
        self.assertEqual((remote.tls.protocol_min, remote.tls.protocol_max), ("TLSv1.2", None))
        self.assertEqual(
            config.remote.proxy, ProxySettings("socks5h", "localhost", 9050, "tor", "pw")
        )
        self.assertEqual(config.remote.server.proxy, "socks5h://tor:pw@localhost:9050")
        self.assertIsNone(config.local.proxy)
        self.assertEqual(
            config.database, os.path.join(self.home, ".local/share/imapsync/personal.db")
        )
        self.assertEqual(len(config.warnings), 1)
        self.assertIn("line 5: SSL_protocols is deprecated", config.warnings[0])
        self.assertIn("SSL_protocol_min = TLSv1.2", config.warnings[0])

    def test_seed_manual_spellings(self) -> None:
        """The seed manual's key names are aliases."""
        capath = os.path.join(self.home, "certs")
        os.mkdir(capath)
        config = self.load(
            MINIMAL
            + f"SSL_verify_trusted_peer = yes\nSSL_ca_path = {capath}\nSSL_cipher_list = HIGH\n"
        )
        assert config.remote.server.tls is not None
        self.assertEqual(
            config.remote.server.tls,
            TLSSettings(hostname="imap.example.net", capath=capath, cipherlist="HIGH"),
        )


class SyntaxTests(ConfigFileTestCase):
    def test_comments_and_spacing(self) -> None:
        """Comment lines, blank lines, CRLF, a BOM, spaces around '=' and
        Config::Tiny's inline ' ; ' comments."""
        path = os.path.join(self.home, "config")
        with open(path, "wb") as f:
            f.write(
                b"\xef\xbb\xbf# comment\r\n; another\r\n   \r\n"
                b"[ local ]\r\n  type=tunnel\r\n\tcommand   =   imap -u x   \r\n"
                b"[remote] ; the other one\r\nhost = h ; where\r\npassword = a;b\r\n"
            )
        os.chmod(path, 0o600)
        config = load_config(path, self.environ)
        self.assertEqual(config.local.server.command, "imap -u x")
        self.assertEqual(config.remote.server.host, "h")
        self.assertEqual(config.remote.server.password, "a;b")

    def test_section_wins(self) -> None:
        config = self.load(
            "username = everyone\ncompress = YES\n" + MINIMAL + "username = remote-user\n"
        )
        self.assertEqual(config.local.server.username, "everyone")
        self.assertEqual(config.remote.server.username, "remote-user")
        self.assertTrue(config.local.server.compress)

    def test_repeated_section(self) -> None:
        config = self.load(MINIMAL + "[local]\nnull-stderr = YES\n")
        self.assertTrue(config.local.server.null_stderr)

    def test_syntax_error(self) -> None:
        self.load_error(MINIMAL + "just words\n", 6, "syntax error", "'just words'")
        self.load_error("[local\n", 1, "syntax error")
        # Passwords stay out of error messages (and so out of logs).
        error = self.load_error(MINIMAL + "password: hunter2\n", 6, "syntax error")
        self.assertNotIn("hunter2", str(error))

    def test_unknown_key(self) -> None:
        self.load_error(
            MINIMAL + "pasword = x\n", 6, "unknown key 'pasword' in [remote]", "'password'"
        )
        self.load_error("frobnicate = 1\n" + MINIMAL, 1, "unknown key 'frobnicate'", "default")

    def test_keys_are_case_sensitive(self) -> None:
        """As in interimap."""
        self.load_error(MINIMAL + "starttls = YES\n", 6, "'STARTTLS'", "case-sensitive")
        self.load_error(MINIMAL + "ssl_cafile = /x\n", 6, "'SSL_CAfile'")

    def test_unknown_section(self) -> None:
        self.load_error(MINIMAL + "[extra]\n", 6, "unknown section [extra]")
        self.load_error("[Local]\n", 1, "[local]", "case-sensitive")

    def test_missing_section(self) -> None:
        self.load_error("[remote]\nhost = h\n", None, "no [local] section")
        self.load_error("host = h\n[local]\n", None, "no [remote] section")

    def test_global_keys_only_in_default_section(self) -> None:
        for key, value in [
            ("database", "x.db"),
            ("logfile", "/tmp/log"),
            ("log-prefix", "%n: "),
            ("list-mailbox", "INBOX"),
            ("list-select-opts", "SUBSCRIBED"),
            ("ignore-mailbox", "^x"),
        ]:
            with self.subTest(key=key):
                self.load_error(
                    MINIMAL + f"{key} = {value}\n", 6, key, "only allowed in the default section"
                )

    def test_duplicate_keys(self) -> None:
        self.load_error(MINIMAL + "port = 1\nport = 2\n", 7, "duplicate key 'port'", "line 6")
        self.load_error(
            MINIMAL + "SSL_CApath = /a\nSSL_ca_path = /b\n",
            7,
            "duplicate key 'SSL_ca_path'",
            "as 'SSL_CApath' on line 6",
        )

    def test_invalid_utf8(self) -> None:
        path = os.path.join(self.home, "config")
        with open(path, "wb") as f:
            f.write(MINIMAL.encode() + b"password = caf\xe9\n")
        error = self.assertRaises(ConfigError, load_config, path, self.environ)
        self.assertEqual(error.line, 6)
        self.assertIn("UTF-8", str(error))

    def test_utf8_values(self) -> None:
        config = self.load(MINIMAL + "password = pässwörd\n")
        self.assertEqual(config.remote.server.password, "pässwörd")

    def test_control_characters(self) -> None:
        error = self.load_error(MINIMAL + "password = a\x07b\n", 6, "password", "control")
        self.assertNotIn("a\x07b", str(error))
        # Tabs are spaces.
        self.assertEqual(self.load(MINIMAL + "password = a\tb\n").remote.server.password, "a\tb")

    def test_empty_values(self) -> None:
        self.load_error(
            MINIMAL.replace("imap.example.net", ""), 5, "no value for host in [remote]"
        )
        self.load_error(MINIMAL + "username =\n", 6, "no value for username in [remote]")
        config = self.load(MINIMAL + "SSL_hostname =\n")
        assert config.remote.server.tls is not None
        self.assertEqual(config.remote.server.tls.sni, "")


class SideKeyTests(ConfigFileTestCase):
    def test_booleans(self) -> None:
        """YES and NO in any case; the error names the key and the line."""
        for key, attribute in [
            ("STARTTLS", "starttls"),
            ("compress", "compress"),
            ("null-stderr", "null_stderr"),
        ]:
            with self.subTest(key=key):
                for word, value in [("YES", True), ("no", False), ("Yes", True)]:
                    server = self.load(MINIMAL + f"{key} = {word}\n").remote.server
                    self.assertEqual(getattr(server, attribute), value)
                for word in ["true", "1", "on", "Y"]:
                    self.load_error(
                        MINIMAL + f"{key} = {word}\n",
                        6,
                        f"invalid {key} '{word}' in [remote]: expected YES or NO",
                    )
        self.load_error(MINIMAL + "SSL_verify = off\n", 6, "SSL_verify", "expected YES or NO")

    def test_compress_defaults(self) -> None:
        """NO for [local], YES for [remote], as interimap."""
        config = self.load(MINIMAL)
        self.assertFalse(config.local.server.compress)
        self.assertTrue(config.remote.server.compress)

    def test_type(self) -> None:
        self.load_error(
            MINIMAL + "type = IMAPS\n", 6, "invalid type 'IMAPS'", "imap, imaps or tunnel"
        )
        self.load_error(
            "[local]\ntype = tunnel\n[remote]\n", 2, "[local] has type=tunnel but no command"
        )
        self.load_error(
            MINIMAL + "command = imap\n", 6, "command is only for type=tunnel", "type=imaps"
        )

    def test_inherited_command_is_for_tunnels_only(self) -> None:
        config = self.load("command = doveadm exec imap\n[local]\ntype = tunnel\n[remote]\n")
        self.assertEqual(config.local.server.command, "doveadm exec imap")
        self.assertIsNone(config.remote.server.command)

    def test_tunnel_ignores_network_keys(self) -> None:
        """A default section for the remote server does not bother a tunnel."""
        config = self.load("port = 10993\nSSL_cipherlist = HIGH\nproxy = socks5://p\n" + MINIMAL)
        self.assertEqual(
            (config.local.server.port, config.local.server.tls, config.local.proxy),
            (None, None, None),
        )
        self.assertEqual(config.remote.server.port, 10993)

    def test_port(self) -> None:
        self.assertEqual(self.load(MINIMAL + "port = 10143\n").remote.server.port, 10143)
        self.assertEqual(self.load(MINIMAL + "port = imap\n").remote.server.port, 143)
        for value, why in [
            ("0", "not in the range 1-65535"),
            ("65536", "not in the range 1-65535"),
            ("no-such-service-here", "unknown TCP service"),
            ("99x!", "expected a port number or a service name"),
        ]:
            with self.subTest(value=value):
                self.load_error(MINIMAL + f"port = {value}\n", 6, f"invalid port '{value}'", why)

    def test_auth(self) -> None:
        server = self.load(MINIMAL + "auth = login  plain Login\n").remote.server
        self.assertEqual(server.auth, ("LOGIN", "PLAIN"))
        self.load_error(
            MINIMAL + "auth = CRAM-MD5 PLAIN\n", 6, "auth", "CRAM-MD5", "PLAIN and LOGIN"
        )

    def test_hosts(self) -> None:
        """Names, bare addresses, and [...] IP literals (kept for the connector,
        without brackets for TLS)."""
        for host, tls_name in [
            ("imap.example.org", "imap.example.org"),
            ("192.0.2.7", "192.0.2.7"),
            ("[192.0.2.7]", "192.0.2.7"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[fe80::1%eth0]", "fe80::1%eth0"),
            ("bücher.example", "bücher.example"),
        ]:
            with self.subTest(host=host):
                config = self.load(MINIMAL.replace("imap.example.net", host))
                self.assertEqual(config.remote.server.host, host)
                assert config.remote.server.tls is not None
                self.assertEqual(config.remote.server.tls.hostname, tls_name)
        for host in ["[imap.example.org]", "[::1", "::1]", "mail server", "a/b"]:
            with self.subTest(host=host):
                self.load_error(
                    MINIMAL.replace("imap.example.net", host), 5, f"invalid host '{host}'"
                )

    def test_username_password(self) -> None:
        server = self.load(MINIMAL + "username = u@example.org\npassword = p=a#ss\n").remote.server
        self.assertEqual((server.username, server.password), ("u@example.org", "p=a#ss"))

    def test_list_reference(self) -> None:
        config = self.load(
            "[local]\ntype = tunnel\ncommand = imap\nlist-reference = Entwürfe/\n[remote]\n"
        )
        self.assertEqual(config.local.list_reference, b"Entw&APw-rfe/")

    def test_proxy(self) -> None:
        for value, proxy in [
            ("socks5://proxy.example", ProxySettings("socks5", "proxy.example", 1080)),
            (
                "socks5h://u:p:q@127.0.0.1:9050",
                ProxySettings("socks5h", "127.0.0.1", 9050, "u", "p:q"),
            ),
            ("socks5://[::1]:1081", ProxySettings("socks5", "::1", 1081)),
            ("SOCKS5H://user@p", ProxySettings("socks5h", "p", 1080, "user", None)),
        ]:
            with self.subTest(value=value):
                self.assertEqual(self.load(MINIMAL + f"proxy = {value}\n").remote.proxy, proxy)
        for value, why in [
            ("http://proxy:3128", "unsupported scheme 'http'"),
            ("socks5://p:0", "from 1 to 65535"),
            ("proxy.example:1080", "not a proxy URL"),
            ("socks5://[proxy]", "not an IP address"),
        ]:
            with self.subTest(value=value):
                self.load_error(
                    MINIMAL + f"proxy = {value}\n", 6, "invalid proxy in [remote]", why
                )
        error = self.load_error(MINIMAL + "proxy = http://me:hunter2@p\n", 6, "invalid proxy")
        self.assertNotIn("hunter2", str(error))

    def test_proxy_reaches_the_connector(self) -> None:
        """The URL goes into ServerSettings (not for a tunnel, which has no socket)."""
        config = self.load("proxy = socks5h://[::1]:9050\n" + MINIMAL)
        self.assertEqual(config.remote.server.proxy, "socks5h://[::1]:9050")
        self.assertIsNone(config.local.server.proxy)
        self.assertIsNone(config.local.proxy)


class TLSKeyTests(ConfigFileTestCase):
    """Bad TLS settings fail at load time, naming the key and its line."""

    def test_cipherlist(self) -> None:
        self.load_error(
            MINIMAL + "port = 993\nSSL_cipherlist = NO-SUCH-CIPHER\n",
            7,
            "SSL_cipherlist",
            "NO-SUCH-CIPHER",
            "in [remote]",
        )

    def test_inherited_setting(self) -> None:
        """An error in the default section points there, and says which side."""
        self.load_error(
            "SSL_cipherlist = NO-SUCH-CIPHER\n" + MINIMAL,
            1,
            "SSL_cipherlist",
            "in the default section, used by [remote]",
        )

    def test_protocols(self) -> None:
        self.load_error(MINIMAL + "SSL_protocol_min = TLSv9\n", 6, "SSL_protocol_min", "TLSv9")
        self.load_error(
            MINIMAL + "SSL_protocol_max = TLSv1.2\nSSL_protocol_min = TLSv1.3\n",
            7,
            "SSL_protocol_min 'TLSv1.3' is above SSL_protocol_max 'TLSv1.2'",
        )
        tls = self.load(MINIMAL + "SSL_protocol_max = TLSv1.3\n").remote.server.tls
        assert tls is not None
        self.assertEqual(tls.protocol_max, "TLSv1.3")

    def test_deprecated_protocols(self) -> None:
        """interimap's SSL_protocols becomes SSL_protocol_min/max."""
        for value, expected in [
            ("!SSLv2 !SSLv3", ("TLSv1", None)),
            ("TLSv1.2", ("TLSv1.2", "TLSv1.2")),
            ("TLSv1.2 TLSv1.3", ("TLSv1.2", None)),
            ("!TLSv1.3", (None, "TLSv1.2")),
            ("!SSLv3 !TLSv1.0", ("TLSv1.1", None)),
            # OpenSSL stops at the first disabled version above the lowest.
            ("TLSv1.1 TLSv1.3", ("TLSv1.1", "TLSv1.1")),
        ]:
            with self.subTest(value=value):
                config = self.load(MINIMAL + f"SSL_protocols = {value}\n")
                tls = config.remote.server.tls
                assert tls is not None
                self.assertEqual((tls.protocol_min, tls.protocol_max), expected)
                self.assertIn("deprecated", config.warnings[0])
        self.load_error(
            MINIMAL + "SSL_protocols = TLSv2\n", 6, "SSL_protocols", "unknown protocol TLSv2"
        )
        self.load_error(MINIMAL + "SSL_protocols = SSLv2\n", 6, "disables every protocol")

    def test_deprecated_protocols_lose_to_min_max(self) -> None:
        config = self.load(MINIMAL + "SSL_protocols = TLSv1.2\nSSL_protocol_min = TLSv1.3\n")
        tls = config.remote.server.tls
        assert tls is not None
        self.assertEqual((tls.protocol_min, tls.protocol_max), ("TLSv1.3", None))
        self.assertIn("SSL_protocols is deprecated and ignored for [remote]", config.warnings[0])

    def test_ciphersuites(self) -> None:
        if not hasattr(SSL.Context, "set_tls13_ciphersuites"):
            self.load_error(
                MINIMAL + "SSL_ciphersuites = TLS_AES_128_GCM_SHA256\n",
                6,
                "SSL_ciphersuites needs pyOpenSSL 25.2",
            )
            return
        text = MINIMAL + "SSL_verify = NO\nSSL_ciphersuites = TLS_AES_128_GCM_SHA256\n"
        tls = self.load(text).remote.server.tls
        assert tls is not None
        self.assertEqual(tls.ciphersuites, "TLS_AES_128_GCM_SHA256")
        self.load_error(
            MINIMAL + "SSL_ciphersuites = TLS_NOPE\n", 6, "SSL_ciphersuites", "TLS_NOPE"
        )

    def test_ciphersuites_with_verification(self) -> None:
        if not hasattr(SSL.Context, "set_tls13_ciphersuites"):
            raise self.skipTest("SSL_ciphersuites needs pyOpenSSL 25.2")
        tls = self.load(MINIMAL + "SSL_ciphersuites = TLS_AES_128_GCM_SHA256\n").remote.server.tls
        assert tls is not None
        self.assertEqual(tls.ciphersuites, "TLS_AES_128_GCM_SHA256")

    def test_empty_ciphersuites(self) -> None:
        """Accepted, as by interimap: no TLS 1.3 suites, so no TLS 1.3."""
        tls = self.load(MINIMAL + "SSL_ciphersuites =\n").remote.server.tls
        assert tls is not None
        self.assertEqual(tls.ciphersuites, "")
        self.load_error(
            MINIMAL + "SSL_protocol_min = TLSv1.3\nSSL_ciphersuites =\n",
            7,
            "SSL_ciphersuites is empty, which disables TLS 1.3",
        )

    def test_cafile(self) -> None:
        missing = os.path.join(self.home, "missing.pem")
        self.load_error(MINIMAL + f"SSL_CAfile = {missing}\n", 6, "SSL_CAfile", missing)
        self.load_error(MINIMAL + f"SSL_CApath = {missing}\n", 6, "SSL_CApath", "not a directory")
        self.load_error(
            MINIMAL + f"SSL_CAfile = {self.write('not a certificate', name='bad.pem')}\n",
            6,
            "no usable PEM certificate",
        )
        # Not read when nothing is verified.
        config = self.load(MINIMAL + f"SSL_verify = NO\nSSL_CAfile = {missing}\n")
        assert config.remote.server.tls is not None
        self.assertFalse(config.remote.server.tls.verify)

    def test_ca_paths_expand_tilde(self) -> None:
        ca = certs.make_ca()
        self.write(ca.cert_pem.decode("ascii"), name="ca.pem")
        os.mkdir(os.path.join(self.home, "certs"))
        tls = self.load(
            MINIMAL + "SSL_CAfile = ~/ca.pem\nSSL_CApath = ~/certs\n"
        ).remote.server.tls
        assert tls is not None
        self.assertEqual(tls.cafile, os.path.join(self.home, "ca.pem"))
        self.assertEqual(tls.capath, os.path.join(self.home, "certs"))

    def test_fingerprint(self) -> None:
        self.load_error(
            MINIMAL + "SSL_fingerprint = sha256$abcd\n", 6, "SSL_fingerprint", "64 hex digits"
        )
        self.load_error(
            MINIMAL + "SSL_fingerprint = md4$00\n", 6, "SSL_fingerprint", "unknown digest"
        )

    def test_plain_imap_ignores_tls_settings(self) -> None:
        """type=imap with STARTTLS=NO: nothing is checked, but a warning says
        that the SSL_* settings are not used."""
        config = self.load(
            MINIMAL + "type = imap\nSTARTTLS = NO\nSSL_cipherlist = NO-SUCH-CIPHER\n"
        )
        self.assertIsNone(config.remote.server.tls)
        self.assertIn("not encrypted", config.warnings[0])

    def test_bad_names(self) -> None:
        """Names that IDNA cannot encode fail where they are written."""
        self.load_error(
            MINIMAL.replace("imap.example.net", "bü..cher"), 5, "invalid host name 'bü..cher'"
        )
        self.load_error(
            MINIMAL + "SSL_hostname = bü..cher\n", 6, "invalid host name 'bü..cher'", "[remote]"
        )

    def test_sni(self) -> None:
        tls = self.load(MINIMAL + "SSL_hostname = imap.example.com\n").remote.server.tls
        assert tls is not None
        self.assertEqual((tls.hostname, tls.sni), ("imap.example.net", "imap.example.com"))
        tls = self.load(MINIMAL).remote.server.tls
        assert tls is not None
        self.assertIsNone(tls.sni)


class PathTests(ConfigFileTestCase):
    def test_config_path(self) -> None:
        environ = {"HOME": "/home/u"}
        xdg = {"HOME": "/home/u", "XDG_CONFIG_HOME": "/xdg/config"}
        self.assertEqual(resolve_config_path(None, environ), "/home/u/.config/imapsync/config")
        self.assertEqual(resolve_config_path(None, xdg), "/xdg/config/imapsync/config")
        self.assertEqual(resolve_config_path("work", xdg), "/xdg/config/work")
        self.assertEqual(
            resolve_config_path("interimap/config", environ), "/home/u/.config/interimap/config"
        )
        self.assertEqual(resolve_config_path("/etc/imapsync.conf", xdg), "/etc/imapsync.conf")
        self.assertEqual(resolve_config_path("~/imapsync.ini", xdg), "/home/u/imapsync.ini")
        # The XDG specification ignores relative values.
        relative = {"HOME": "/home/u", "XDG_CONFIG_HOME": "relative"}
        self.assertEqual(resolve_config_path(None, relative), "/home/u/.config/imapsync/config")

    def test_default_config_file(self) -> None:
        os.makedirs(os.path.join(self.home, ".config/imapsync"))
        self.write(MINIMAL, name=".config/imapsync/config")
        config = load_config(None, self.environ)
        self.assertEqual(config.path, os.path.join(self.home, ".config/imapsync/config"))

    def test_missing_config_file(self) -> None:
        error = self.assertRaises(ConfigFileMissingError, load_config, None, self.environ)
        path = os.path.join(self.home, ".config/imapsync/config")
        self.assertEqual(error.exit_code, 2)
        self.assertIn(f"no configuration file {path}", str(error))
        self.assertIn("--config", str(error))
        self.assertIsInstance(error, ConfigError)
        error = self.assertRaises(ConfigFileMissingError, load_config, self.home, self.environ)
        self.assertIn(self.home, str(error))

    def test_database(self) -> None:
        data = os.path.join(self.home, ".local/share/imapsync")
        xdg = os.path.join(self.home, "data")
        for prefix, environ, expected in [
            ("", self.environ, f"{data}/imap.example.net.db"),
            ("", {**self.environ, "XDG_DATA_HOME": xdg}, f"{xdg}/imapsync/imap.example.net.db"),
            ("database = work.db\n", self.environ, f"{data}/work.db"),
            ("database = sub/work.db\n", self.environ, f"{data}/sub/work.db"),
            ("database = /var/lib/x.db\n", self.environ, "/var/lib/x.db"),
            ("database = ~/x.db\n", self.environ, f"{self.home}/x.db"),
        ]:
            with self.subTest(prefix=prefix, environ=environ):
                config = load_config(self.write(prefix + MINIMAL), environ)
                self.assertEqual(config.database, expected)
        self.assertEqual(data_directory(self.environ), data)

    def test_default_database_name(self) -> None:
        """HOST.db from [remote]: localhost for a tunnel, brackets kept."""
        data = os.path.join(self.home, ".local/share/imapsync")
        for text, name in [
            ("[local]\nhost = l\n[remote]\nhost = r\n", "r.db"),
            ("[local]\nhost = l\n[remote]\ntype = tunnel\ncommand = x\n", "localhost.db"),
            ("[local]\n[remote]\nhost = [::1]\n", "[::1].db"),
            ("host = shared\n[local]\n[remote]\n", "shared.db"),
        ]:
            with self.subTest(text=text):
                self.assertEqual(self.load(text).database, os.path.join(data, name))

    def test_logfile(self) -> None:
        self.assertEqual(self.load("logfile = /var/log/x\n" + MINIMAL).logfile, "/var/log/x")
        self.assertEqual(
            self.load("logfile = ~/sync.log\n" + MINIMAL).logfile,
            os.path.join(self.home, "sync.log"),
        )
        self.load_error("logfile = sync.log\n" + MINIMAL, 1, "logfile", "absolute path")
        self.load_error("logfile = ~no-such-user-here/x\n" + MINIMAL, 1, "logfile", "no such user")


class InterimapDatabaseTests(ConfigFileTestCase):
    """An interimap configuration used as is finds interimap's database."""

    def test_default_database_found_in_interimaps_directory(self) -> None:
        theirs = os.path.join(self.home, ".local/share/interimap/imap.example.net.db")
        os.makedirs(os.path.dirname(theirs))
        open(theirs, "wb").close()
        config = self.load(MINIMAL)
        self.assertEqual(config.database, theirs)
        self.assertEqual(config.notes, (f"using interimap's database {theirs}",))

    def test_relative_database_too(self) -> None:
        theirs = os.path.join(self.home, ".local/share/interimap/work.db")
        os.makedirs(os.path.dirname(theirs))
        open(theirs, "wb").close()
        self.assertEqual(self.load("database = work.db\n" + MINIMAL).database, theirs)

    def test_ours_wins_when_both_exist(self) -> None:
        for directory in ("imapsync", "interimap"):
            path = os.path.join(self.home, ".local/share", directory, "imap.example.net.db")
            os.makedirs(os.path.dirname(path))
            open(path, "wb").close()
        config = self.load(MINIMAL)
        self.assertIn("/imapsync/", config.database)
        self.assertEqual(config.notes, ())

    def test_absolute_database_is_taken_as_given(self) -> None:
        path = os.path.join(self.home, "elsewhere.db")
        self.assertEqual(self.load(f"database = {path}\n" + MINIMAL).database, path)


class PermissionTests(ConfigFileTestCase):
    def test_readable_password(self) -> None:
        path = self.write(MINIMAL + "password = x\n", mode=0o644)
        config = load_config(path, self.environ)
        self.assertEqual(
            config.warnings,
            (f"config file {path} is readable by others and holds a password; chmod 600 {path}",),
        )
        self.write(MINIMAL + "password = x\n", mode=0o640)
        self.assertEqual(len(load_config(path, self.environ).warnings), 1)

    def test_private_or_no_password(self) -> None:
        self.assertEqual(self.load(MINIMAL + "password = x\n", mode=0o600).warnings, ())
        self.assertEqual(self.load(MINIMAL, mode=0o644).warnings, ())

    def test_proxy_password(self) -> None:
        config = self.load(MINIMAL + "proxy = socks5://u:p@proxy\n", mode=0o604)
        self.assertIn("chmod 600", config.warnings[0])


class MailboxListTests(ConfigFileTestCase):
    def list_mailbox(self, value: str) -> tuple[bytes, ...]:
        return self.load(f"list-mailbox = {value}\n" + MINIMAL).list_mailbox

    def test_words(self) -> None:
        self.assertEqual(self.list_mailbox("INBOX  Sent\tWork/*"), (b"INBOX", b"Sent", b"Work/*"))
        self.assertEqual(self.list_mailbox("a[b] x}y"), (b"a[b]", b"x}y"))

    def test_quoted(self) -> None:
        self.assertEqual(
            self.list_mailbox(r'"Sent Items" "a\"b" "back\\slash" "(x)" "\x41\x42"'),
            (b"Sent Items", b'a"b', b"back\\slash", b"(x)", b"AB"),
        )

    def test_delimiter(self) -> None:
        """\\0 stands for the hierarchy delimiter: kept as NUL."""
        self.assertEqual(self.list_mailbox(r'"foo\0bar" "a\x00%"'), (b"foo\0bar", b"a\0%"))

    def test_non_ascii(self) -> None:
        """Modified UTF-7 (interimap) and UTF-8 text give the same wire name."""
        self.assertEqual(
            self.list_mailbox('Entw&APw-rfe Entwürfe "Entwürfe\\0%" "\\xc3\\xa9t\\xc3\\xa9"'),
            (b"Entw&APw-rfe", b"Entw&APw-rfe", b"Entw&APw-rfe\0%", b"&AOk-t&AOk-"),
        )
        # An "&" that is not modified UTF-7 is text.
        self.assertEqual(self.list_mailbox("Tom&Jerry"), (b"Tom&-Jerry",))

    def test_control_characters_escaped(self) -> None:
        self.assertEqual(self.list_mailbox(r'"a\tb"'), (b"a&AAk-b",))

    def test_errors(self) -> None:
        for value, fragment in [
            ("INBOX (x)", "'(' at column 7"),
            ('"unterminated', "'\"' at column 1"),
            ('foo"bar"', "'\"' at column 4"),
            ('"" x', "column 1"),
            (r'"bad\q"', "column 1"),
            (r'"\xff"', "not valid UTF-8"),
            ("back\\slash", "column 5"),
        ]:
            with self.subTest(value=value):
                self.load_error(
                    f"list-mailbox = {value}\n" + MINIMAL, 1, "invalid list-mailbox", fragment
                )

    def test_select_opts(self) -> None:
        config = self.load("list-select-opts = subscribed RecursiveMatch\n" + MINIMAL)
        self.assertEqual(config.list_select_opts, (b"SUBSCRIBED", b"RECURSIVEMATCH"))
        self.assertEqual(self.load("list-select-opts =\n" + MINIMAL).list_select_opts, ())
        self.load_error(
            "list-select-opts = (SUBSCRIBED)\n" + MINIMAL, 1, "list-select-opts", "atom"
        )

    def test_ignore_mailbox(self) -> None:
        config = self.load("ignore-mailbox = ^virtual(?:\\x00|$)\n" + MINIMAL)
        self.assertTrue(config.ignores(b"virtual"))
        self.assertTrue(config.ignores(b"virtual\0Unread"))
        self.assertFalse(config.ignores(b"virtualbox"))
        self.assertFalse(config.ignores(b"Archive\0virtual"))
        # A search, not a match, as Perl's =~.
        config = self.load("ignore-mailbox = Spam\n" + MINIMAL)
        self.assertTrue(config.ignores(b"INBOX\0Spam"))
        self.assertFalse(self.load(MINIMAL).ignores(b"anything"))

    def test_ignore_mailbox_errors(self) -> None:
        self.load_error(
            "ignore-mailbox = ^(virtual\n" + MINIMAL,
            1,
            "ignore-mailbox",
            "missing ), unterminated subpattern",
        )
        self.load_error(
            "ignore-mailbox = ^Entwürfe\n" + MINIMAL, 1, "ignore-mailbox", "ASCII", "Entw&APw-rfe"
        )


class MailboxToWireTests(SynchronousTestCase):
    def test_vectors(self) -> None:
        for name, wire in [
            ("INBOX", b"INBOX"),
            ("*", b"*"),
            ("Entw&APw-rfe", b"Entw&APw-rfe"),
            ("Entwürfe", b"Entw&APw-rfe"),
            ("Tom&Jerry", b"Tom&-Jerry"),
            ("Tom&-Jerry", b"Tom&-Jerry"),
            ("a\0b", b"a\0b"),
            ("台北\0%", b"&U,BTFw-\0%"),
        ]:
            with self.subTest(name=name):
                self.assertEqual(mailbox_to_wire(name), wire)

    @given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")))
    def test_always_valid_wire(self, name: str) -> None:
        """The result is canonical modified UTF-7, and the same name as typed
        unless that was already in wire form."""
        decoded = decode_mailbox(mailbox_to_wire(name))
        if "&" not in name:
            self.assertEqual(decoded, name)


# log-prefix -------------------------------------------------------------

PERL_PREFIX = r"""
use Net::IMAP::InterIMAP;
$| = 1;
while (my $line = <STDIN>) {
    chomp $line;
    my ($format, $name, $mailbox) = split /\t/, $line, 3;
    $name = undef if $name eq "\x01";
    $mailbox = undef if $mailbox eq "\x01";
    print Net::IMAP::InterIMAP::_logger_prefix(
        { 'logger-prefix' => $format, name => $name, mailbox => $mailbox }), "\n";
}
"""


@functools.cache
def _interimap_available() -> bool:
    try:
        result = subprocess.run(
            ["perl", "-MNet::IMAP::InterIMAP", "-e", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return False
    return result.returncode == 0


class _InterimapPrefix:
    """interimap's own _logger_prefix, in a Perl process."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            ["perl", "-e", PERL_PREFIX],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            encoding="ascii",
        )

    def format(self, template: str, server: Optional[str], mailbox: Optional[str]) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        fields = [
            template,
            "\x01" if server is None else server,
            "\x01" if mailbox is None else mailbox,
        ]
        self.process.stdin.write("\t".join(fields) + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline()[:-1]

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.stdout.close()
        self.process.wait()


# Characters that matter to the syntax, and a few that do not.
_template_text = st.text(alphabet="%?&\\nmxab :()", max_size=24)
_values = st.sampled_from([None, "", "local", "remote", "INBOX", "%n", "a&b?"])


# A well-formed template and what it expands to, given {"n": ..., "m": ...}.
_Piece = Tuple[str, Callable[[Dict[str, str]], str]]
_LITERALS: Dict[str, Callable[[Dict[str, str]], str]] = {
    "a": lambda values: "a",
    " ": lambda values: " ",
    "(": lambda values: "(",
    ": ": lambda values: ": ",
    "%%": lambda values: "%",
    "%n": lambda values: values["n"],
    "%m": lambda values: values["m"],
    "\\&": lambda values: "&",
    "\\?": lambda values: "?",
    "\\\\": lambda values: "\\",
}
_literal_pieces = st.sampled_from(sorted(_LITERALS.items()))


def _sequence(pieces: List[_Piece]) -> _Piece:
    return (
        "".join(raw for raw, _ in pieces),
        lambda values: "".join(expand(values) for _, expand in pieces),
    )


def _conditional(letter: str, then: _Piece, otherwise: Optional[_Piece]) -> _Piece:
    raw = f"%?{letter}?{then[0]}" + ("" if otherwise is None else "&" + otherwise[0]) + "?"

    def expand(values: Dict[str, str]) -> str:
        if values[letter]:
            return then[1](values)
        return "" if otherwise is None else otherwise[1](values)

    return raw, expand


def _bodies(children: st.SearchStrategy[_Piece]) -> st.SearchStrategy[_Piece]:
    conditional = st.builds(
        _conditional, st.sampled_from("nm"), children, st.one_of(st.none(), children)
    )
    return st.lists(st.one_of(_literal_pieces, conditional), max_size=4).map(_sequence)


_valid_templates = st.recursive(
    st.lists(_literal_pieces, max_size=3).map(_sequence), _bodies, max_leaves=12
)


class LogPrefixTests(SynchronousTestCase):
    _interimap: Optional[_InterimapPrefix] = None

    def interimap(self) -> _InterimapPrefix:
        """One Perl process for all the examples of a test."""
        if not _interimap_available():
            raise self.skipTest("interimap's Net::IMAP::InterIMAP is not installed")
        if self._interimap is None:
            self._interimap = _InterimapPrefix()
            self.addCleanup(self._interimap.close)
        return self._interimap

    def test_default(self) -> None:
        for server, mailbox, expected in [
            ("local", "INBOX", "local(INBOX): "),
            ("remote", None, "remote: "),
            ("remote", "", "remote: "),
            (None, "INBOX", ""),
            (None, None, ""),
        ]:
            with self.subTest(server=server, mailbox=mailbox):
                self.assertEqual(format_log_prefix(DEFAULT_LOG_PREFIX, server, mailbox), expected)

    def test_sequences(self) -> None:
        for template, expected in [
            ("", ""),
            ("[%n] %m: ", "[local] INBOX: "),
            ("100%% %n", "100% local"),
            ("\\& \\? \\\\", "& ? \\"),
            ("%?m?<%m>&no mailbox?", "<INBOX>"),
            ("%?x?then&else?", "else"),
            ("%?n?a\\&b?", "a&b"),
            # Values are not expanded again.
            ("%m", "INBOX"),
        ]:
            with self.subTest(template=template):
                self.assertEqual(format_log_prefix(template, "local", "INBOX"), expected)
        self.assertEqual(format_log_prefix("%n(%m)", "local", "%n"), "local(%n)")

    def test_validation(self) -> None:
        self.assertIsNone(_log_prefix_problem(DEFAULT_LOG_PREFIX))
        for template, fragment in [
            ("%", "lone %"),
            ("%d ", "unknown sequence %d"),
            ("%?n?unterminated", "unterminated conditional %?n?"),
            ("%?x?y?", "unknown %x"),
            ("%?n", "malformed conditional"),
            ("%?n?a&b&c?", "second &"),
            ("a & b", "unescaped &"),
            ("why?", "unescaped ?"),
            ("%%?n?x?", "unescaped ?"),
            ("back\\slash", "lone backslash"),
        ]:
            with self.subTest(template=template):
                problem = _log_prefix_problem(template)
                assert problem is not None
                self.assertIn(fragment, problem)

    def test_config_key(self) -> None:
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        path = os.path.join(home, "config")
        with open(path, "w") as f:
            f.write("log-prefix = %n %d: \n" + MINIMAL)
        error = self.assertRaises(ConfigError, load_config, path, {"HOME": home})
        self.assertEqual(error.line, 1)
        self.assertIn("invalid log-prefix '%n %d:'", str(error))
        self.assertIn("unknown sequence %d at column 4", str(error))

    @settings(max_examples=300)
    @given(st.lists(st.tuples(_template_text, _values, _values), min_size=1, max_size=20))
    def test_same_as_interimap(
        self, cases: List[tuple[str, Optional[str], Optional[str]]]
    ) -> None:
        """Any template, valid or not, expands as interimap expands it."""
        interimap = self.interimap()
        for template, server, mailbox in cases:
            self.assertEqual(
                format_log_prefix(template, server, mailbox),
                interimap.format(template, server, mailbox),
                repr((template, server, mailbox)),
            )

    @given(_valid_templates, _values, _values)
    def test_valid_templates(
        self, piece: _Piece, server: Optional[str], mailbox: Optional[str]
    ) -> None:
        """Well-formed templates pass the check and expand as the manual says
        (and as interimap does)."""
        template, expand = piece
        self.assertIsNone(_log_prefix_problem(template))
        expanded = format_log_prefix(template, server, mailbox)
        self.assertEqual(expanded, expand({"n": server or "", "m": mailbox or ""}))
        if _interimap_available():
            self.assertEqual(expanded, self.interimap().format(template, server, mailbox))


# Fuzzing ------------------------------------------------------------------

_KEYS = [
    "database",
    "logfile",
    "log-prefix",
    "list-mailbox",
    "list-select-opts",
    "ignore-mailbox",
    "type",
    "host",
    "port",
    "command",
    "STARTTLS",
    "auth",
    "username",
    "password",
    "list-reference",
    "compress",
    "null-stderr",
    "proxy",
    "SSL_fingerprint",
    "SSL_verify",
    "SSL_verify_trusted_peer",
    "SSL_CAfile",
    "SSL_CApath",
    "SSL_ca_path",
    "SSL_hostname",
    "SSL_protocol_min",
    "SSL_protocol_max",
    "SSL_protocols",
    "SSL_cipherlist",
    "SSL_cipher_list",
    "SSL_ciphersuites",
]
_VALUES = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "YES",
            "no",
            "imap",
            "imaps",
            "tunnel",
            "[::1]",
            "[x]",
            "993",
            "socks5h://u:p@[::1]:99",
            '"a\\0b" c',
            "%?n?%n&x?",
            "(?P<",
            "a{99999999999}",
            "~nobody-here/x",
            "!TLSv1 TLSv1.3",
            "sha256$00",
            "PLAIN LOGIN",
            "HIGH:!x",
        ]
    ),
)
_LINES = st.one_of(
    st.builds(lambda key, value: f"{key} = {value}", st.sampled_from(_KEYS), _VALUES),
    st.sampled_from(["[local]", "[remote]", "[other]", "# c", "type = tunnel", "command = x"]),
    st.text(max_size=30),
)


class FuzzTests(SynchronousTestCase):
    @settings(deadline=None, max_examples=300)
    @given(st.lists(_LINES, max_size=14))
    def test_only_config_errors(self, lines: List[str]) -> None:
        """Whatever the text, loading it succeeds or raises ConfigError."""
        self._load(("\n".join(lines)).encode("utf-8", "surrogatepass"))

    @settings(deadline=None)
    @given(st.binary(max_size=200))
    def test_only_config_errors_on_bytes(self, data: bytes) -> None:
        self._load(data)

    def _load(self, data: bytes) -> None:
        directory = getattr(self, "_directory", None)
        if directory is None:
            directory = self._directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
        path = os.path.join(directory, "config")
        with open(path, "wb") as f:
            f.write(data)
        try:
            config = load_config(path, {"HOME": directory})
        except ConfigError as e:
            self.assertTrue(str(e))
        else:
            self.assertTrue(os.path.isabs(config.database))

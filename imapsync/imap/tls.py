# -*- test-case-name: tests.test_imap_tls -*-
"""TLS for IMAP connections: settings, key pinning, and the client connection
creator used for both imaps and STARTTLS."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import string
from typing import Optional, Union

import attrs
import idna
import OpenSSL
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsync.imap.errors import FingerprintMismatchError, TLSVerificationError

log = Logger()

__all__ = [
    "ClientTLSCreator",
    "TLSConfigError",
    "TLSSettings",
    "format_fingerprint",
    "parse_fingerprint",
    "spki_fingerprint",
]


class TLSConfigError(ValueError):
    """A TLS setting is invalid or cannot be honoured by the installed libraries."""


@attrs.frozen
class TLSSettings:
    """What to require of the server's TLS, as configured for one side.

    The certificate is always checked against ``hostname`` (a DNS name or
    an IP literal), as interimap checks it against C{host}. ``sni`` is
    SSL_hostname and only changes the name sent as SNI: C{None} means "the
    host name" (nothing for an IP literal), the empty string means "send no
    SNI", and an IP literal sends none either (RFC 6066 allows only DNS
    names). ``ciphersuites`` is SSL_ciphersuites: the empty string disables
    every TLS 1.3 suite, as in interimap, and so TLS 1.3 itself (the highest
    version is capped at TLS 1.2). ``fingerprints`` holds raw ``[ALGO$]HEX``
    strings.
    """

    hostname: str
    verify: bool = True
    cafile: Optional[str] = None
    capath: Optional[str] = None
    sni: Optional[str] = None
    fingerprints: tuple[str, ...] = ()
    protocol_min: Optional[str] = None
    protocol_max: Optional[str] = None
    cipherlist: Optional[str] = None
    ciphersuites: Optional[str] = None


# Canonical (OpenSSL-style) digest name -> hashlib name. Keys of the lookup
# table drop '-' and '_' so that SHA-256, sha_256 and sha256 all work.
_DIGESTS = {
    "sha1": "sha1",
    "sha224": "sha224",
    "sha256": "sha256",
    "sha384": "sha384",
    "sha512": "sha512",
    "sha512-224": "sha512_224",
    "sha512-256": "sha512_256",
    "sha3-224": "sha3_224",
    "sha3-256": "sha3_256",
    "sha3-384": "sha3_384",
    "sha3-512": "sha3_512",
}
_DIGEST_LOOKUP = {re.sub("[-_]", "", name): name for name in _DIGESTS}


def _digest_name(algorithm: str, context: str) -> str:
    key = re.sub("[-_]", "", algorithm.strip().lower())
    try:
        return _DIGEST_LOOKUP[key]
    except KeyError:
        raise TLSConfigError(
            f"{context}: unknown digest algorithm {algorithm!r} (use one of {', '.join(_DIGESTS)})"
        )


def _digest(name: str, data: bytes, context: str) -> bytes:
    try:
        return hashlib.new(_DIGESTS[name], data).digest()
    except ValueError:
        raise TLSConfigError(f"{context}: digest {name} is not available in this Python")


def parse_fingerprint(text: str) -> tuple[str, bytes]:
    """Parse an SSL_fingerprint value ``[ALGO$]HEX`` into (algorithm, digest).

    The algorithm defaults to sha256; hex digits are case-insensitive and may
    be separated by colons.
    """
    context = f"invalid SSL_fingerprint {text!r}"
    algorithm, dollar, digits = text.strip().partition("$")
    if not dollar:
        algorithm, digits = "sha256", algorithm
    elif not algorithm:
        raise TLSConfigError(f"{context}: no digest algorithm before '$'")
    name = _digest_name(algorithm, context)
    digits = digits.replace(":", "")
    if not digits or not all(c in string.hexdigits for c in digits):
        raise TLSConfigError(f"{context}: the digest must be hexadecimal")
    size = len(_digest(name, b"", context))
    if len(digits) != 2 * size:
        raise TLSConfigError(
            f"{context}: a {name} digest has {2 * size} hex digits, not {len(digits)}"
        )
    return name, bytes.fromhex(digits)


def spki_fingerprint(
    certificate: Union[x509.Certificate, crypto.X509], algorithm: str = "sha256"
) -> bytes:
    """Digest of the certificate's SubjectPublicKeyInfo (DER), as in
    ``openssl x509 -pubkey | openssl pkey -pubin -outform DER | openssl dgst``."""
    if isinstance(certificate, crypto.X509):
        certificate = certificate.to_cryptography()
    context = "spki_fingerprint"
    der = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return _digest(_digest_name(algorithm, context), der, context)


def format_fingerprint(algorithm: str, digest: bytes) -> str:
    """Format a digest the way SSL_fingerprint takes it: ``sha256$hex``."""
    return f"{_digest_name(algorithm, 'format_fingerprint')}${digest.hex()}"


_PROTOCOLS = {
    "ssl3": SSL.SSL3_VERSION,
    "tls1": SSL.TLS1_VERSION,
    "tls1.0": SSL.TLS1_VERSION,
    "tls1.1": SSL.TLS1_1_VERSION,
    "tls1.2": SSL.TLS1_2_VERSION,
    "tls1.3": SSL.TLS1_3_VERSION,
}


def _protocol_version(name: str, key: str) -> int:
    """Map TLSv1.2 (also TLSv1_2, tls1.2, and interimap's SSLv3/TLSv1) to OpenSSL's constant."""
    normal = re.sub("^(ssl|tls)v", r"\1", name.strip().lower().replace("_", "."))
    try:
        return _PROTOCOLS[normal]
    except KeyError:
        raise TLSConfigError(
            f"invalid {key} {name!r} (use one of SSLv3, TLSv1, TLSv1.1, TLSv1.2, TLSv1.3)"
        )


# X509_verify_cert_error_string() of the codes a user is likely to meet; the
# codes are stable across OpenSSL versions.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    4: "unable to decrypt certificate's signature",
    6: "unable to decode issuer public key",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    13: "format error in certificate's notBefore field",
    14: "format error in certificate's notAfter field",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    22: "certificate chain too long",
    23: "certificate revoked",
    24: "invalid CA certificate",
    25: "path length constraint exceeded",
    26: "unsupported certificate purpose",
    27: "certificate not trusted",
    28: "certificate rejected",
    32: "key usage does not include certificate signing",
    66: "EE certificate key too weak",
    67: "CA certificate key too weak",
    68: "CA signature digest algorithm too weak",
}
# Errors that mean "we do not trust the issuer", where the fix is configuration.
_TRUST_ERRORS = frozenset({2, 18, 19, 20, 21, 27})


def _ip_literal(host: str) -> Optional[str]:
    """The address if C{host} is an IP literal ([...] and a %zone allowed), else None."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.partition("%")[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _dns_ascii(name: str) -> str:
    """The A-label (ASCII) form of a host name, as SNI and service_identity want it."""
    name = name.rstrip(".")
    if name.isascii():
        return name
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as e:
        raise TLSConfigError(f"invalid host name {name!r}: {e}")


def _build_context(settings: TLSSettings) -> SSL.Context:
    # Nothing here may create an SSL.Connection from this context: that
    # freezes it, and pyOpenSSL >= 26 then refuses any further setting.
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_options(SSL.OP_NO_COMPRESSION)
    low = _optional_version(settings.protocol_min, "SSL_protocol_min")
    high = _optional_version(settings.protocol_max, "SSL_protocol_max")
    if low is not None and high is not None and low > high:
        raise TLSConfigError(
            f"SSL_protocol_min {settings.protocol_min!r} is above"
            f" SSL_protocol_max {settings.protocol_max!r}"
        )
    if settings.ciphersuites == "":
        # interimap hands an empty SSL_ciphersuites to SSL_CTX_set_ciphersuites(),
        # which disables every TLS 1.3 suite ("an empty list is permissible").
        # An OpenSSL client then refuses to start a handshake whose highest
        # version is TLS 1.3 ("no ciphers available"): interimap connects
        # only if SSL_protocol_max is also TLSv1.2 or lower. We give the same
        # result -- no TLS 1.3 -- by capping the highest version at TLS 1.2,
        # which works without SSL_protocol_max too, and on pyOpenSSL without
        # set_tls13_ciphersuites. A floor of TLS 1.3 can then never connect.
        if low is not None and low > SSL.TLS1_2_VERSION:
            raise TLSConfigError(
                "SSL_ciphersuites is empty, which disables TLS 1.3, the only"
                f" protocol SSL_protocol_min {settings.protocol_min!r} allows"
            )
        if high is None or high > SSL.TLS1_2_VERSION:
            high = SSL.TLS1_2_VERSION
    for key, value, version, setter in (
        ("SSL_protocol_min", settings.protocol_min, low, context.set_min_proto_version),
        ("SSL_protocol_max", settings.protocol_max, high, context.set_max_proto_version),
    ):
        if version is not None:
            try:
                setter(version)
            except SSL.Error:
                # e.g. SSLv3 with OpenSSL 4, which dropped it
                raise TLSConfigError(f"{key} {value!r} is not supported by {_openssl_version()}")
    if settings.cipherlist is not None:
        # Anonymous suites would skip the certificate, and so every check.
        cipherlist = settings.cipherlist + ":!aNULL"
        try:
            context.set_cipher_list(cipherlist.encode("ascii"))
        except (SSL.Error, UnicodeEncodeError):
            raise TLSConfigError(
                f"invalid SSL_cipherlist {settings.cipherlist!r}: OpenSSL matches no"
                " authenticated cipher (see ciphers(1ssl))"
            )
    if settings.ciphersuites:
        _set_ciphersuites(context, settings.ciphersuites)
    if settings.verify:
        _load_trust(context, settings.cafile, settings.capath)
    return context


def _optional_version(value: Optional[str], key: str) -> Optional[int]:
    return None if value is None else _protocol_version(value, key)


def _openssl_version() -> str:
    return SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode("ascii", "replace")


def _set_ciphersuites(context: SSL.Context, ciphersuites: str) -> None:
    # pyOpenSSL >= 25.2 only; so the setting fails at start-up on older ones.
    setter = getattr(SSL.Context, "set_tls13_ciphersuites", None)
    if setter is None:
        raise TLSConfigError(
            "SSL_ciphersuites needs pyOpenSSL 25.2 or later"
            f" (this is pyOpenSSL {OpenSSL.__version__})"
        )
    # OpenSSL skips unknown suite names silently: check that each one is in
    # effect. Only a connection lists them, and creating one freezes its
    # context, so the check uses a throwaway context with the same suites.
    probe = SSL.Context(SSL.TLS_CLIENT_METHOD)
    try:
        for target in (context, probe):
            setter(target, ciphersuites.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise TLSConfigError(f"invalid SSL_ciphersuites {ciphersuites!r}")
    enabled = set(SSL.Connection(probe, None).get_cipher_list())
    unknown = [name for name in ciphersuites.split(":") if name and name not in enabled]
    if unknown:
        raise TLSConfigError(
            f"invalid SSL_ciphersuites {ciphersuites!r}: unknown TLS 1.3 suite(s)"
            f" {', '.join(unknown)}"
        )


def _load_trust(context: SSL.Context, cafile: Optional[str], capath: Optional[str]) -> None:
    if cafile is None and capath is None:
        context.set_default_verify_paths()
        return
    if cafile is not None:
        try:
            with open(cafile, "rb"):
                pass
        except OSError as e:
            raise TLSConfigError(f"cannot read SSL_CAfile {cafile!r}: {e.strerror}")
    if capath is not None and not os.path.isdir(capath):
        raise TLSConfigError(f"SSL_CApath {capath!r} is not a directory")
    try:
        context.load_verify_locations(cafile, capath)
    except SSL.Error:
        if cafile is None:
            raise TLSConfigError(f"cannot use SSL_CApath {capath!r}")
        raise TLSConfigError(f"SSL_CAfile {cafile!r} holds no usable PEM certificate")


@implementer(IOpenSSLClientConnectionCreator)
class ClientTLSCreator:
    """Client TLS connections that check the server as L{TLSSettings} say.

    The C{SSL.Context} is built here, once, so bad settings raise
    L{TLSConfigError} at start-up. Verification failures reach the
    application's C{connectionLost} as L{TLSVerificationError} or
    L{FingerprintMismatchError}, with a message meant for the user.
    """

    def __init__(self, settings: TLSSettings) -> None:
        self.settings = settings
        self._pins = tuple(parse_fingerprint(text) for text in settings.fingerprints)
        if not settings.hostname.strip():
            raise TLSConfigError("no host name to check the server certificate against")
        # As interimap: the certificate is checked against the host, and
        # SSL_hostname is only what is sent as SNI.
        self._ip = _ip_literal(settings.hostname)
        self._name = self._ip if self._ip is not None else _dns_ascii(settings.hostname)
        sni: Optional[str] = None
        if settings.sni is None:
            sni = None if self._ip is not None else self._name
        elif settings.sni.strip() and _ip_literal(settings.sni) is None:
            sni = _dns_ascii(settings.sni)
        self._sni = None if sni is None else sni.encode("ascii")
        self._context = _build_context(settings)

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        check = _PeerCheck(
            tls_protocol=tlsProtocol,
            name=self._name,
            ip=self._ip,
            verify=self.settings.verify,
            pins=self._pins,
        )
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, check)
        return connection


@attrs.define
class _PeerCheck:
    """The verify callback of one connection.

    OpenSSL calls it once per certificate of the chain (and again for each
    error found), from the top of the chain down to the server's own
    certificate at depth 0.
    """

    tls_protocol: TLSMemoryBIOProtocol
    name: str
    ip: Optional[str]
    verify: bool
    pins: tuple[tuple[str, bytes], ...]
    _pins_checked: bool = attrs.field(default=False, init=False)
    _name_checked: bool = attrs.field(default=False, init=False)
    _failed: bool = attrs.field(default=False, init=False)

    def __call__(
        self, connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
    ) -> bool:
        if self._failed:
            return False
        # Never let an exception reach OpenSSL: it would be lost or printed.
        try:
            problem = self._problem(certificate.to_cryptography(), error, depth, bool(ok))
        except BaseException:
            log.failure("while verifying the certificate of {name}", name=self.name)
            problem = TLSVerificationError(
                f"internal error while verifying the certificate of {self.name}"
            )
        if problem is None:
            return True
        self._failed = True
        failure = Failure(problem)
        self.tls_protocol.failVerification(failure)
        return False

    def _problem(
        self, certificate: x509.Certificate, error: int, depth: int, ok: bool
    ) -> Optional[TLSVerificationError]:
        if depth == 0 and self.pins and not self._pins_checked:
            self._pins_checked = True
            if not any(spki_fingerprint(certificate, algo) == pin for algo, pin in self.pins):
                algorithms = dict.fromkeys(algo for algo, _ in self.pins)
                seen = " / ".join(
                    format_fingerprint(algo, spki_fingerprint(certificate, algo))
                    for algo in algorithms
                )
                return FingerprintMismatchError(
                    f"server key {seen} matches none of the pinned fingerprints (SSL_fingerprint)"
                )
        if not self.verify:
            return None
        if not ok:
            return TLSVerificationError(self._chain_message(certificate, error, depth))
        if depth == 0 and not self._name_checked:
            self._name_checked = True
            return self._check_name(certificate)
        return None

    def _chain_message(self, certificate: x509.Certificate, error: int, depth: int) -> str:
        reason = _VERIFY_ERRORS.get(error, f"OpenSSL verify error {error}")
        hint = " (set SSL_CAfile/SSL_CApath or SSL_verify=NO)" if error in _TRUST_ERRORS else ""
        return (
            f"certificate verification failed for {self.name}: {reason}{hint};"
            f" certificate at depth {depth}: {certificate.subject.rfc4514_string()},"
            f" issued by {certificate.issuer.rfc4514_string()}"
        )

    def _check_name(self, certificate: x509.Certificate) -> Optional[TLSVerificationError]:
        try:
            if self.ip is not None:
                verify_certificate_ip_address(certificate, self.ip)
            else:
                verify_certificate_hostname(certificate, self.name)
        except VerificationError:
            return TLSVerificationError(
                f"certificate does not match hostname {self.name}:"
                f" it is for {_certificate_names(certificate)}"
            )
        except CertificateError as e:
            return TLSVerificationError(
                f"certificate does not match hostname {self.name}: {e}"
                f" (it is for {_certificate_names(certificate)})"
            )
        return None


def _certificate_names(certificate: x509.Certificate) -> str:
    """The names a certificate is valid for, for error messages."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        common_names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        names = [f"CN={attribute.value!s}" for attribute in common_names]
        return ", ".join(names) + " (no subjectAltName)" if names else "no name at all"
    values = san.get_values_for_type(x509.DNSName) + [
        str(address) for address in san.get_values_for_type(x509.IPAddress)
    ]
    return ", ".join(values) if values else "no DNS name or IP address"

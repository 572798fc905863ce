"""Certificates made in-process with cryptography, for TLS tests and for the
Dovecot test daemon (PEM files, and a CApath directory with hash links)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Iterable, Optional, Union

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]
PublicKey = Union[ec.EllipticCurvePublicKey, rsa.RSAPublicKey]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_key(kind: str = "ec") -> PrivateKey:
    """A fresh private key: "ec" (P-256, fast) or "rsa" (2048 bits)."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key kind {kind!r}")


@attrs.frozen
class CertifiedKey:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def to_pyopenssl(self) -> tuple[crypto.X509, crypto.PKey]:
        return (
            crypto.X509.from_cryptography(self.certificate),
            crypto.PKey.from_cryptography_key(self.key),
        )

    def use_in(self, context: SSL.Context) -> None:
        """Make C{context} serve this certificate and key."""
        try:
            context.use_certificate(self.certificate)
            context.use_privatekey(self.key)
        except TypeError:
            # pyOpenSSL before 24.3 takes only its own types (newer ones
            # deprecate them).
            certificate, key = self.to_pyopenssl()
            context.use_certificate(certificate)
            context.use_privatekey(key)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imapsync tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: PublicKey,
    not_before: Optional[datetime.datetime],
    not_after: Optional[datetime.datetime],
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or _now() - datetime.timedelta(days=1))
        .not_valid_after(not_after or _now() + datetime.timedelta(days=365))
    )


def _leaf_extensions(
    builder: x509.CertificateBuilder,
    key: PrivateKey,
    dns_names: Iterable[str],
    ip_addresses: Iterable[str],
) -> x509.CertificateBuilder:
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


@attrs.frozen
class CertificateAuthority(CertifiedKey):
    """A root CA that issues server certificates."""

    def issue(
        self,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str] = (),
        *,
        common_name: Optional[str] = None,
        not_before: Optional[datetime.datetime] = None,
        not_after: Optional[datetime.datetime] = None,
        key: Optional[PrivateKey] = None,
    ) -> CertifiedKey:
        """A server certificate for the given SAN names (none: CN only).

        The common name defaults to the first DNS name or address.
        """
        dns_names, ip_addresses = list(dns_names), list(ip_addresses)
        key = key or make_key()
        common_name = common_name or (dns_names + ip_addresses + ["imapsync test server"])[0]
        builder = _builder(
            _name(common_name),
            self.certificate.subject,
            key.public_key(),
            not_before,
            not_after,
        )
        builder = _leaf_extensions(builder, key, dns_names, ip_addresses).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
            critical=False,
        )
        return CertifiedKey(builder.sign(self.key, hashes.SHA256()), key)


def make_ca(
    common_name: str = "imapsync test CA", *, key: Optional[PrivateKey] = None
) -> CertificateAuthority:
    """A self-signed root CA."""
    key = key or make_key()
    name = _name(common_name)
    certificate = (
        _builder(name, name, key.public_key(), None, _now() + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate, key)


def make_self_signed(
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    *,
    common_name: Optional[str] = None,
    not_before: Optional[datetime.datetime] = None,
    not_after: Optional[datetime.datetime] = None,
    key: Optional[PrivateKey] = None,
) -> CertifiedKey:
    """A self-signed server certificate (what a test Dovecot serves)."""
    dns_names, ip_addresses = list(dns_names), list(ip_addresses)
    key = key or make_key()
    name = _name(common_name or (dns_names + ip_addresses + ["imapsync test server"])[0])
    builder = _builder(name, name, key.public_key(), not_before, not_after)
    certificate = _leaf_extensions(builder, key, dns_names, ip_addresses).sign(
        key, hashes.SHA256()
    )
    return CertifiedKey(certificate, key)


@attrs.frozen
class PemFiles:
    """Paths of the files written by L{write_pem_files}."""

    cert: str
    key: str
    ca: Optional[str]


def write_pem_files(
    directory: str,
    server: CertifiedKey,
    ca: Optional[CertifiedKey] = None,
    *,
    basename: str = "server",
) -> PemFiles:
    """Write C{basename}.crt, C{basename}.key (mode 0600) and, with a CA,
    ca.crt into C{directory}, for Dovecot's C{ssl_cert = <FILE} and
    C{ssl_key = <FILE}, and for SSL_CAfile."""
    os.makedirs(directory, exist_ok=True)
    cert_path = os.path.join(directory, basename + ".crt")
    key_path = os.path.join(directory, basename + ".key")
    with open(cert_path, "wb") as f:
        f.write(server.cert_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(server.key_pem)
    ca_path = None
    if ca is not None:
        ca_path = os.path.join(directory, "ca.crt")
        with open(ca_path, "wb") as f:
            f.write(ca.cert_pem)
    return PemFiles(cert_path, key_path, ca_path)


def subject_hash(certificate: x509.Certificate) -> str:
    """OpenSSL's subject name hash (as in C{openssl x509 -hash}), 8 hex digits."""
    return f"{crypto.X509.from_cryptography(certificate).subject_name_hash():08x}"


def make_capath(directory: str, *cas: CertifiedKey) -> str:
    """A CApath directory: each CA as PEM plus the C{<hash>.N} symlink that
    C{openssl rehash} would make. Returns the directory."""
    os.makedirs(directory, exist_ok=True)
    for index, ca in enumerate(cas):
        filename = f"ca{index}.pem"
        with open(os.path.join(directory, filename), "wb") as f:
            f.write(ca.cert_pem)
        prefix = subject_hash(ca.certificate)
        suffix = 0
        while os.path.lexists(os.path.join(directory, f"{prefix}.{suffix}")):
            suffix += 1
        os.symlink(filename, os.path.join(directory, f"{prefix}.{suffix}"))
    return directory

"""Certificates `pki` would never issue, minted with `cryptography` as a holder of a CA signature would.

Each one breaks exactly one rule of the certificate policy, so a test can tell which rule refused it.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import pki

# AlgorithmIdentifier of ecdsa-with-SHA256 and of ecdsa-with-SHA1 (neither has parameters).
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
_ECDSA_SHA1 = bytes.fromhex("300906072a8648ce3d0401")


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _sequence(body: bytes) -> bytes:
    return b"\x30" + _der_length(len(body)) + body


def _content(der: bytes) -> bytes:
    """The content octets of one DER element (tag and length stripped)."""
    first = der[1]
    header = 2 if first < 0x80 else 2 + (first & 0x7F)
    return der[header:]


def resign_sha1(cert: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """`cert` signed with ECDSA over SHA-1 (cryptography refuses to build that itself)."""
    tbs = _content(cert.tbs_certificate_bytes)
    assert tbs.count(_ECDSA_SHA256) == 1, "the issuer must be an EC key signing with SHA-256"
    new_tbs = _sequence(tbs.replace(_ECDSA_SHA256, _ECDSA_SHA1))
    signature = issuer_key.sign(new_tbs, ec.ECDSA(hashes.SHA1()))
    bit_string = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    return x509.load_der_x509_certificate(_sequence(new_tbs + _ECDSA_SHA1 + bit_string))


def forge(
    issuer: pki.Issued,
    *,
    cn: str = "forged",
    role: pki.Role | None = pki.Role.ADMIN,
    ca: bool = False,
    eku: list[x509.ObjectIdentifier] | None = None,
    key: pki.PrivateKey | None = None,
    sha1: bool = False,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    sans: list[str] | None = None,
) -> pki.Issued:
    """A client certificate signed by `issuer`; `eku=[]` leaves the EKU extension out, `sans` add SANs."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=1))
        .not_valid_after(not_after or now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if role is not None:
        value = x509.UnrecognizedExtension(pki.ROLE_OID, pki.encode_role(role))
        builder = builder.add_extension(value, critical=False)
    if eku != []:
        usages = eku if eku is not None else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        names = [pki_san(name) for name in sans]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(issuer.key, hashes.SHA256())
    if sha1:
        assert isinstance(issuer.key, ec.EllipticCurvePrivateKey)
        cert = resign_sha1(cert, issuer.key)
    return pki.Issued(cert, key)


def pki_san(name: str) -> x509.GeneralName:
    """A DNS or IP SAN entry."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def chain_pem(*certs: pki.Issued) -> bytes:
    """The PEM chain a client sends: leaf first, then the certificates that signed it."""
    return b"".join(c.cert.public_bytes(Encoding.PEM) for c in certs)

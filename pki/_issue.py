"""Certificate profiles: CA, server and client, built from explicit parameters (no file IO)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki._errors import IssueError, ValidityError
from pki._keys import KeyType, PrivateKey, generate_key
from pki._role import ROLE_OID, Role, encode_role

CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_SERVER_SANS: tuple[str, ...] = ("localhost", "127.0.0.1")
CLIENT_URI_PREFIX = "urn:jobworker:client:"

# Names double as file names and as the identity the server records, so keep them boring.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
NAME_RULE = "use 1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"


@dataclass(frozen=True)
class Issued:
    """A certificate together with its private key."""

    cert: x509.Certificate
    key: PrivateKey

    def cert_pem(self) -> bytes:
        """Return the certificate as PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """Return the private key as unencrypted PKCS#8 PEM."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def valid_name(name: str) -> bool:
    """Whether `name` follows NAME_RULE (certificate CNs, file stems, identities)."""
    return _NAME_RE.fullmatch(name) is not None


def check_name(name: str) -> str:
    """Return `name` if it is a valid certificate/file name, else raise IssueError."""
    if not valid_name(name):
        raise IssueError(f"invalid name {name!r}: {NAME_RULE}")
    return name


def parse_san(value: str) -> x509.GeneralName:
    """Turn a DNS name or IP address into a SAN entry, or raise IssueError."""
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not value.isascii():
        raise IssueError(f"invalid SAN {value!r}: use the ASCII (xn--) form of the DNS name")
    labels = value.split(".")
    if len(value) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in labels):
        raise IssueError(f"invalid SAN {value!r}: not a DNS name or IP address")
    return x509.DNSName(value)


def _utc(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None:
        raise ValidityError(f"{what} must be timezone-aware")
    # X.509 times carry whole seconds; truncating here keeps comparisons honest.
    return moment.astimezone(UTC).replace(microsecond=0)


def _window(
    ca: x509.Certificate | None,
    days: int,
    not_before: datetime | None,
    not_after: datetime | None,
) -> tuple[datetime, datetime]:
    now = datetime.now(UTC).replace(microsecond=0)
    if not_after is None and days < 1:
        raise ValidityError(f"days must be at least 1, got {days}")
    if not_before is None:
        start = now - CLOCK_SKEW
        if ca is not None:
            start = max(start, ca.not_valid_before_utc)
    else:
        start = _utc(not_before, "not_before")
    if not_after is None:
        end = (now if not_before is None else start) + timedelta(days=days)
    else:
        end = _utc(not_after, "not_after")
    if end <= start:
        raise ValidityError(f"empty validity window: not_after {end} is not after {start}")
    if ca is not None:
        ca_start, ca_end = ca.not_valid_before_utc, ca.not_valid_after_utc
        if start < ca_start:
            raise ValidityError(f"not_before {start} is before the CA's not_before {ca_start}")
        if end > ca_end:
            remaining = max((ca_end - now).days, 0)
            raise ValidityError(
                f"validity until {end:%Y-%m-%d %H:%M:%S}Z exceeds the CA's, which ends "
                f"{ca_end:%Y-%m-%d %H:%M:%S}Z ({remaining} whole day(s) remain)"
            )
    return start, end


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _key_usage(*, signer: bool, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signer,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signer,
        crl_sign=signer,
        encipher_only=False,
        decipher_only=False,
    )


def _sign(
    builder: x509.CertificateBuilder,
    key: PrivateKey,
    extensions: Iterable[x509.Extension[x509.ExtensionType]],
) -> x509.Certificate:
    for ext in extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(key, hashes.SHA256())


def _leaf_builder(
    ca: Issued, cn: str, key: PrivateKey, start: datetime, end: datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_aki(ca.cert), critical=False)
    )


def issue_ca(
    cn: str = "jobworker CA",
    key_type: KeyType = KeyType.P256,
    days: int = 3650,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Issued:
    """Create a self-signed CA that may sign leaves only (path length 0)."""
    if not 1 <= len(cn) <= 64:
        raise IssueError("CA common name must be 1-64 characters")
    start, end = _window(None, days, not_before, not_after)
    key = generate_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signer=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    return Issued(cert=_sign(builder, key, ()), key=key)


def issue_server(
    ca: Issued,
    name: str,
    sans: Sequence[str] = DEFAULT_SERVER_SANS,
    days: int = 365,
    key_type: KeyType = KeyType.P256,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    extra_extensions: Sequence[x509.Extension[x509.ExtensionType]] = (),
) -> Issued:
    """Issue a serverAuth leaf with subject CN `name` and SANs `sans` plus `name`."""
    check_name(name)
    # dict keeps first-seen order while dropping repeats such as NAME == "localhost".
    general_names = list(dict.fromkeys(parse_san(s) for s in (*sans, name)))
    start, end = _window(ca.cert, days, not_before, not_after)
    key = generate_key(key_type)
    builder = (
        _leaf_builder(ca, name, key, start, end)
        .add_extension(
            _key_usage(signer=False, key_encipherment=isinstance(key, rsa.RSAPrivateKey)),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
    )
    return Issued(cert=_sign(builder, ca.key, extra_extensions), key=key)


def issue_client(
    ca: Issued,
    name: str,
    role: Role | None,
    days: int = 45,
    key_type: KeyType = KeyType.P256,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    role_der: bytes | None = None,
    extra_extensions: Sequence[x509.Extension[x509.ExtensionType]] = (),
) -> Issued:
    """Issue a clientAuth leaf for identity `name` with `role` (or raw `role_der`, for tests)."""
    check_name(name)
    if role is not None and role_der is not None:
        raise IssueError("give either role or role_der, not both")
    start, end = _window(ca.cert, days, not_before, not_after)
    key = generate_key(key_type)
    builder = (
        _leaf_builder(ca, name, key, start, end)
        .add_extension(_key_usage(signer=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + name)]),
            critical=False,
        )
    )
    value = encode_role(role) if role is not None else role_der
    if value is not None:
        # Non-critical on purpose: TLS stacks reject certificates with unknown critical extensions.
        builder = builder.add_extension(x509.UnrecognizedExtension(ROLE_OID, value), critical=False)
    return Issued(cert=_sign(builder, ca.key, extra_extensions), key=key)


def _issue_peer(
    ca: Issued,
    name: str,
    sans: Sequence[str],
    days: int,
    key_type: KeyType,
    role: Role | None,
) -> Issued:
    # A leaf that is both a server (to its callers) and a client (of its peers): serverAuth + clientAuth.
    check_name(name)
    general_names = list(dict.fromkeys(parse_san(s) for s in (*sans, name)))
    start, end = _window(ca.cert, days, None, None)
    key = generate_key(key_type)
    builder = (
        _leaf_builder(ca, name, key, start, end)
        .add_extension(
            _key_usage(signer=False, key_encipherment=isinstance(key, rsa.RSAPrivateKey)),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
    )
    if role is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ROLE_OID, encode_role(role)), critical=False
        )
    return Issued(cert=_sign(builder, ca.key, ()), key=key)


def issue_node(
    ca: Issued,
    name: str,
    sans: Sequence[str] = DEFAULT_SERVER_SANS,
    days: int = 365,
    key_type: KeyType = KeyType.P256,
) -> Issued:
    """Issue a fleet node's leaf: its server certificate and, with role `node`, its client one to peers."""
    return _issue_peer(ca, name, sans, days, key_type, Role.NODE)


def issue_etcd(
    ca: Issued,
    name: str,
    sans: Sequence[str] = DEFAULT_SERVER_SANS,
    days: int = 365,
    key_type: KeyType = KeyType.P256,
) -> Issued:
    """Issue an etcd member's leaf (client and peer URLs): both EKUs, no role, so never a jobworker caller."""
    return _issue_peer(ca, name, sans, days, key_type, None)

"""Certificate profiles: what issue_ca / issue_server / issue_client put into certificates."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

import pki


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


def _cn(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


def test_ca_profile() -> None:
    issued = pki.issue_ca("my CA", pki.KeyType.P256, 10)
    cert = issued.cert
    assert _cn(cert) == "my CA"
    assert cert.issuer == cert.subject
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert isinstance(issued.key, ec.EllipticCurvePrivateKey)
    assert issued.key.curve.name == "secp256r1"
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value == x509.BasicConstraints(ca=True, path_length=0)
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert isinstance(ku.value, x509.KeyUsage)
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert isinstance(ski, x509.SubjectKeyIdentifier)
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == ski.digest
    cert.verify_directly_issued_by(cert)


def test_validity_starts_slightly_in_the_past_for_clock_skew() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    cert = pki.issue_ca("skew", pki.KeyType.P256, 10).cert
    after = datetime.now(UTC)
    assert before - pki.CLOCK_SKEW <= cert.not_valid_before_utc <= after - pki.CLOCK_SKEW
    assert cert.not_valid_before_utc < before
    assert timedelta(days=10) <= cert.not_valid_after_utc - cert.not_valid_before_utc


def test_serials_are_random_and_positive(ca: pki.Issued) -> None:
    serials = {pki.issue_client(ca, "s", pki.Role.READER).cert.serial_number for _ in range(5)}
    assert len(serials) == 5
    assert all(0 < s < 2**160 and s.bit_length() > 64 for s in serials)


def test_server_profile_default_sans(ca: pki.Issued, server: pki.Issued) -> None:
    cert = server.cert
    assert _cn(cert) == "server"
    assert cert.issuer == ca.cert.subject
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "server"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = _ext(cert, x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]  # type: ignore[call-overload]
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value == x509.BasicConstraints(ca=False, path_length=None)
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert isinstance(ku.value, x509.KeyUsage)
    assert ku.value.digital_signature
    assert not ku.value.key_cert_sign
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    ca_ski = _ext(ca.cert, x509.SubjectKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert isinstance(ca_ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ca_ski.digest
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_oid(pki.ROLE_OID)
    cert.verify_directly_issued_by(ca.cert)


def test_server_custom_sans_plus_name(ca: pki.Issued) -> None:
    cert = pki.issue_server(ca, "jw1", ["jw.example.com", "10.0.0.7", "::1", "jw1"]).cert
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["jw.example.com", "jw1"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    ]


@pytest.mark.parametrize(
    "san", ["", "bad name", "-lead.example", "a..b", "*.example.com", "exämple.com", "x" * 64]
)
def test_server_rejects_invalid_sans(ca: pki.Issued, san: str) -> None:
    with pytest.raises(pki.IssueError, match="invalid SAN"):
        pki.issue_server(ca, "server", [san])


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden", "-x", "a b", "x" * 65, "é"])
def test_names_are_restricted(ca: pki.Issued, name: str) -> None:
    with pytest.raises(pki.IssueError, match="invalid name"):
        pki.issue_client(ca, name, pki.Role.READER)
    with pytest.raises(pki.IssueError, match="invalid name"):
        pki.issue_server(ca, name)


def test_client_profile(ca: pki.Issued) -> None:
    issued = pki.issue_client(ca, "alice", pki.Role.WRITER)
    cert = issued.cert
    assert _cn(cert) == "alice"
    assert pki.identity_of(cert) == "alice"
    assert pki.parse_role(cert) is pki.Role.WRITER
    role_ext = cert.extensions.get_extension_for_oid(pki.ROLE_OID)
    assert not role_ext.critical
    assert isinstance(role_ext.value, x509.UnrecognizedExtension)
    assert role_ext.value.value == b"\x0c\x06writer"
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:jobworker:client:alice"]
    eku = _ext(cert, x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    assert _ext(cert, x509.BasicConstraints).critical
    assert _ext(cert, x509.KeyUsage).critical
    assert cert.not_valid_after_utc - datetime.now(UTC) <= timedelta(days=45)
    assert cert.not_valid_after_utc - datetime.now(UTC) > timedelta(days=44)
    # Only BasicConstraints and KeyUsage may be critical: anything else breaks handshakes.
    critical = {ext.oid for ext in cert.extensions if ext.critical}
    assert critical == {x509.BasicConstraints.oid, x509.KeyUsage.oid}


def test_client_without_role_has_no_role_extension(ca: pki.Issued) -> None:
    cert = pki.issue_client(ca, "anon", None).cert
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_oid(pki.ROLE_OID)


def test_client_raw_role_der_is_written_verbatim(ca: pki.Issued) -> None:
    cert = pki.issue_client(ca, "raw", None, role_der=b"\x13\x05admin").cert
    value = cert.extensions.get_extension_for_oid(pki.ROLE_OID).value
    assert isinstance(value, x509.UnrecognizedExtension)
    assert value.value == b"\x13\x05admin"


def test_client_refuses_role_and_role_der_together(ca: pki.Issued) -> None:
    with pytest.raises(pki.IssueError, match="not both"):
        pki.issue_client(ca, "both", pki.Role.ADMIN, role_der=pki.encode_role(pki.Role.ADMIN))


def test_extra_extensions_are_added(ca: pki.Issued) -> None:
    oid = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")
    extra = x509.Extension(oid, False, x509.UnrecognizedExtension(oid, b"\x05\x00"))
    cert = pki.issue_client(ca, "extra", pki.Role.READER, extra_extensions=[extra]).cert
    assert cert.extensions.get_extension_for_oid(oid).value == extra.value


def test_validity_must_fit_in_the_ca_remaining_validity() -> None:
    short_ca = pki.issue_ca("short", pki.KeyType.P256, 30)
    with pytest.raises(pki.ValidityError, match="exceeds the CA's"):
        pki.issue_client(short_ca, "bob", pki.Role.READER, 45)
    with pytest.raises(pki.ValidityError, match="exceeds the CA's"):
        pki.issue_server(short_ca, "server", days=365)
    assert pki.issue_client(short_ca, "bob", pki.Role.READER, 29).cert


def test_explicit_window_must_fit_in_the_ca(ca: pki.Issued) -> None:
    with pytest.raises(pki.ValidityError, match="before the CA's not_before"):
        pki.issue_client(
            ca,
            "early",
            pki.Role.READER,
            not_before=ca.cert.not_valid_before_utc - timedelta(seconds=1),
            not_after=datetime.now(UTC) + timedelta(days=1),
        )
    with pytest.raises(pki.ValidityError, match="exceeds the CA's"):
        pki.issue_client(
            ca,
            "late",
            pki.Role.READER,
            not_after=ca.cert.not_valid_after_utc + timedelta(seconds=1),
        )


def test_expired_and_not_yet_valid_clients_can_be_minted(ca: pki.Issued) -> None:
    now = datetime.now(UTC)
    expired = pki.issue_client(
        ca,
        "expired",
        pki.Role.READER,
        not_before=now - timedelta(days=2),
        not_after=now - timedelta(days=1),
    ).cert
    assert expired.not_valid_after_utc < now
    future = pki.issue_client(ca, "future", pki.Role.READER, not_before=now + timedelta(days=1), days=2).cert
    assert future.not_valid_before_utc > now
    assert future.not_valid_after_utc - future.not_valid_before_utc == timedelta(days=2)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        pytest.param({"days": 0}, "at least 1", id="zero-days"),
        pytest.param({"not_after": datetime(2020, 1, 1)}, "timezone-aware", id="naive"),
        pytest.param(
            {"not_before": datetime.now(UTC), "not_after": datetime.now(UTC) - timedelta(days=1)},
            "empty validity window",
            id="inverted",
        ),
    ],
)
def test_invalid_windows_are_refused(ca: pki.Issued, kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(pki.ValidityError, match=reason):
        pki.issue_client(ca, "w", pki.Role.READER, **kwargs)  # type: ignore[arg-type]


def test_issued_pem_helpers_round_trip(ca: pki.Issued) -> None:
    from cryptography.hazmat.primitives import serialization

    issued = pki.issue_client(ca, "pem", pki.Role.READER)
    assert x509.load_pem_x509_certificate(issued.cert_pem()) == issued.cert
    key = serialization.load_pem_private_key(issued.key_pem(), password=None)
    assert key.public_key() == issued.key.public_key()
    assert issued.key_pem().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_rsa4096_profile(rsa_ca: pki.Issued, rsa_client: pki.Issued) -> None:
    assert isinstance(rsa_ca.key, rsa.RSAPrivateKey)
    assert rsa_ca.key.key_size == 4096
    assert isinstance(rsa_client.key, rsa.RSAPrivateKey)
    assert rsa_client.key.key_size == 4096
    for cert in (rsa_ca.cert, rsa_client.cert):
        assert cert.signature_algorithm_oid == SignatureAlgorithmOID.RSA_WITH_SHA256
    assert pki.parse_role(rsa_client.cert) is pki.Role.ADMIN
    rsa_client.cert.verify_directly_issued_by(rsa_ca.cert)


def test_p256_leaf_from_rsa_ca_is_signed_with_rsa(rsa_ca: pki.Issued) -> None:
    cert = pki.issue_server(rsa_ca, "mixed", days=30).cert
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.RSA_WITH_SHA256
    assert pki.describe(cert).key_type == "p256"

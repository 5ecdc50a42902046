"""verify_certificate: chain, validity window, EKU and role checks, each with a failing case."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

import pki


def _problems(cert: x509.Certificate, ca: x509.Certificate, **kwargs: datetime) -> str:
    with pytest.raises(pki.VerificationError) as info:
        pki.verify_certificate(cert, ca, **kwargs)
    assert info.value.problems
    return str(info.value)


def test_valid_server_client_and_ca_pass(ca: pki.Issued, server: pki.Issued) -> None:
    pki.verify_certificate(server.cert, ca.cert)
    for role in pki.Role:
        pki.verify_certificate(pki.issue_client(ca, "ok", role).cert, ca.cert)
    pki.verify_certificate(ca.cert, ca.cert)


def test_rsa_chain_passes(rsa_ca: pki.Issued, rsa_client: pki.Issued) -> None:
    pki.verify_certificate(rsa_client.cert, rsa_ca.cert)


def test_foreign_ca_is_rejected(foreign_ca: pki.Issued, ca: pki.Issued) -> None:
    cert = pki.issue_client(foreign_ca, "mallory", pki.Role.ADMIN).cert
    assert "issuer name does not match" in _problems(cert, ca.cert)


def test_same_name_different_key_is_rejected(ca: pki.Issued) -> None:
    impostor = pki.issue_ca("test CA", pki.KeyType.P256, 30)
    cert = pki.issue_client(impostor, "mallory", pki.Role.ADMIN, 10).cert
    assert "signature does not verify" in _problems(cert, ca.cert)


def test_expired_is_rejected(ca: pki.Issued) -> None:
    now = datetime.now(UTC)
    cert = pki.issue_client(ca, "old", pki.Role.READER, not_before=now - timedelta(days=3), days=1).cert
    assert "certificate expired" in _problems(cert, ca.cert)


def test_not_yet_valid_is_rejected(ca: pki.Issued) -> None:
    now = datetime.now(UTC)
    cert = pki.issue_client(ca, "new", pki.Role.READER, not_before=now + timedelta(hours=1), days=1).cert
    assert "not valid before" in _problems(cert, ca.cert)


def test_expired_ca_is_reported(ca: pki.Issued, server: pki.Issued) -> None:
    later = ca.cert.not_valid_after_utc + timedelta(days=1)
    assert "CA expired" in _problems(server.cert, ca.cert, at=later)
    assert "CA expired" in _problems(ca.cert, ca.cert, at=later)


def test_client_without_role_is_rejected(ca: pki.Issued) -> None:
    cert = pki.issue_client(ca, "anon", None).cert
    assert "role: certificate has no role extension" in _problems(cert, ca.cert)


def test_client_with_malformed_role_is_rejected(ca: pki.Issued) -> None:
    cert = pki.issue_client(ca, "bad", None, role_der=b"\x0c\x04root").cert
    assert "unknown role 'root'" in _problems(cert, ca.cert)


def test_client_with_duplicate_role_is_rejected(
    ca: pki.Issued, duplicate_role_cert: Callable[[pki.Role, pki.Role], x509.Certificate]
) -> None:
    cert = duplicate_role_cert(pki.Role.READER, pki.Role.ADMIN)
    assert "role extension appears more than once" in _problems(cert, ca.cert)


def test_server_with_malformed_role_is_rejected(ca: pki.Issued) -> None:
    oid = pki.ROLE_OID
    bad = x509.Extension(oid, False, x509.UnrecognizedExtension(oid, b"\x0c\x01x"))
    cert = pki.issue_server(ca, "srv", extra_extensions=[bad]).cert
    assert "role:" in _problems(cert, ca.cert)


def test_leaf_without_tls_usage_is_rejected(ca: pki.Issued, server: pki.Issued) -> None:
    # A leaf with no EKU at all: re-sign the server's fields without the EKU extension.
    builder = (
        x509.CertificateBuilder()
        .subject_name(server.cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(server.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(server.cert.not_valid_before_utc)
        .not_valid_after(server.cert.not_valid_after_utc)
    )
    for ext in server.cert.extensions:
        if ext.oid != x509.ExtendedKeyUsage.oid:
            builder = builder.add_extension(ext.value, ext.critical)
    from cryptography.hazmat.primitives import hashes

    cert = builder.sign(ca.key, hashes.SHA256())
    assert "no serverAuth or clientAuth" in _problems(cert, ca.cert)


def test_critical_unknown_extension_fails_path_validation(ca: pki.Issued) -> None:
    oid = x509.ObjectIdentifier("1.3.6.1.4.1.55555.2")
    ext = x509.Extension(oid, True, x509.UnrecognizedExtension(oid, b"\x05\x00"))
    cert = pki.issue_client(ca, "crit", pki.Role.READER, extra_extensions=[ext]).cert
    assert "path validation failed" in _problems(cert, ca.cert)

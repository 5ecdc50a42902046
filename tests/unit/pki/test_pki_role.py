"""The role extension: encoding, round trips and the strict parser's refusals."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

import pki

DuplicateRoleFactory = Callable[[pki.Role, pki.Role], x509.Certificate]


def test_role_oid_is_the_documented_one() -> None:
    assert pki.ROLE_OID.dotted_string == "1.2.840.10070.8.1"


@pytest.mark.parametrize("role", list(pki.Role))
def test_encode_role_is_a_der_utf8string(role: pki.Role) -> None:
    text = role.value.encode()
    assert pki.encode_role(role) == bytes([0x0C, len(text)]) + text


@pytest.mark.parametrize("role", list(pki.Role))
def test_role_round_trips_through_a_certificate(ca: pki.Issued, role: pki.Role) -> None:
    issued = pki.issue_client(ca, f"user-{role.value}", role)
    ext = issued.cert.extensions.get_extension_for_oid(pki.ROLE_OID)
    assert ext.critical is False
    assert pki.parse_role(issued.cert) is role
    assert pki.parse_role_der(pki.encode_role(role)) is role


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(b"", "too short", id="empty"),
        pytest.param(b"\x0c", "too short", id="tag-only"),
        pytest.param(b"\x13\x06writer", "tag 0x13", id="printable-string"),
        pytest.param(b"\x04\x06writer", "tag 0x04", id="octet-string"),
        pytest.param(b"\x04\x08\x0c\x06writer", "tag 0x04", id="wrapped-in-octet-string"),
        pytest.param(b"\x30\x08\x0c\x06writer", "tag 0x30", id="sequence"),
        pytest.param(b"\x0c\x06writer\x00", "trailing", id="trailing-byte"),
        pytest.param(b"\x0c\x06writer\x0c\x05admin", "trailing", id="two-strings"),
        pytest.param(b"\x0c\x07writer", "truncated", id="length-too-long"),
        pytest.param(b"\x0c\x05writer", "trailing", id="length-too-short"),
        pytest.param(b"\x0c\x80writer\x00\x00", "indefinite", id="indefinite-length"),
        pytest.param(b"\x0c\x81\x06writer", "minimally", id="long-form-for-short-length"),
        pytest.param(b"\x0c\x82\x00\x06writer", "minimally", id="leading-zero-length"),
        pytest.param(b"\x0c\x82\x01", "truncated or oversized", id="cut-length-field"),
        pytest.param(b"\x0c\x85\x00\x00\x00\x00\x06writer", "oversized", id="five-length-octets"),
        pytest.param(b"\x0c\x02\xff\xfe", "UTF-8", id="invalid-utf8"),
        pytest.param(b"\x0c\x00", "unknown role ''", id="empty-string"),
        pytest.param(b"\x0c\x04root", "unknown role 'root'", id="unknown-role"),
        pytest.param(b"\x0c\x06Writer", "unknown role 'Writer'", id="wrong-case"),
        pytest.param(b"\x0c\x07writer ", "unknown role", id="trailing-space"),
        pytest.param(b"\x0c\x07writer\x00", "unknown role", id="embedded-nul"),
    ],
)
def test_parse_role_der_rejects_malformed_values(value: bytes, reason: str) -> None:
    with pytest.raises(pki.RoleError, match=reason):
        pki.parse_role_der(value)


def test_parse_role_der_accepts_long_form_but_checks_the_name() -> None:
    name = b"a" * 200
    with pytest.raises(pki.RoleError, match="unknown role"):
        pki.parse_role_der(b"\x0c\x81\xc8" + name)


def test_role_error_is_a_pki_error() -> None:
    assert issubclass(pki.RoleError, pki.PkiError)


def test_parse_role_rejects_a_certificate_without_role(ca: pki.Issued) -> None:
    issued = pki.issue_client(ca, "norole", None)
    with pytest.raises(pki.RoleError, match="no role extension"):
        pki.parse_role(issued.cert)


def test_parse_role_rejects_a_server_certificate(server: pki.Issued) -> None:
    with pytest.raises(pki.RoleError, match="no role extension"):
        pki.parse_role(server.cert)


@pytest.mark.parametrize(
    "value", [b"\x13\x06writer", b"\x0c\x06writer\x00", b"\x0c\x05admin\x00", b"\x0c\x04root"]
)
def test_parse_role_rejects_malformed_extension_in_certificate(ca: pki.Issued, value: bytes) -> None:
    issued = pki.issue_client(ca, "malformed", None, role_der=value)
    with pytest.raises(pki.RoleError):
        pki.parse_role(issued.cert)


@pytest.mark.parametrize(
    ("first", "second"),
    [(pki.Role.READER, pki.Role.ADMIN), (pki.Role.WRITER, pki.Role.WRITER)],
)
def test_parse_role_rejects_two_role_extensions(
    duplicate_role_cert: DuplicateRoleFactory, first: pki.Role, second: pki.Role
) -> None:
    with pytest.raises(pki.RoleError, match="more than once"):
        pki.parse_role(duplicate_role_cert(first, second))


def test_identity_of_is_the_subject_common_name(ca: pki.Issued) -> None:
    assert pki.identity_of(pki.issue_client(ca, "alice", pki.Role.READER).cert) == "alice"


@pytest.mark.parametrize(
    "attributes",
    [
        pytest.param([], id="no-cn"),
        pytest.param(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "a"),
                x509.NameAttribute(NameOID.COMMON_NAME, "b"),
            ],
            id="two-cns",
        ),
    ],
)
def test_identity_of_needs_exactly_one_common_name(
    ca: pki.Issued, attributes: list[x509.NameAttribute[str]]
) -> None:
    leaf = pki.issue_client(ca, "x", pki.Role.READER)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca.cert.subject)
        .public_key(leaf.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(leaf.cert.not_valid_before_utc)
        .not_valid_after(leaf.cert.not_valid_after_utc)
        .sign(ca.key, hashes.SHA256())
    )
    with pytest.raises(pki.IdentityError):
        pki.identity_of(cert)

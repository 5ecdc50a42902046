"""Fixtures for the pki tests: CAs and leaves minted once per worker, openssl, DER surgery."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

import pki

# Same length as ROLE_OID's encoding, so swapping the last arc keeps every DER length intact.
_ROLE_OID_DER = b"\x06\x07\x2a\x86\x48\xce\x56\x08\x01"
_PLACEHOLDER_OID = x509.ObjectIdentifier("1.2.840.10070.8.2")
_PLACEHOLDER_OID_DER = b"\x06\x07\x2a\x86\x48\xce\x56\x08\x02"


@pytest.fixture(scope="session")
def ca() -> pki.Issued:
    """A P-256 CA whose window starts 30 days ago, so expired leaves fit inside it."""
    return pki.issue_ca("test CA", pki.KeyType.P256, 3650, not_before=datetime.now(UTC) - timedelta(days=30))


@pytest.fixture(scope="session")
def foreign_ca() -> pki.Issued:
    """An unrelated CA, for certificates the test CA must not accept."""
    return pki.issue_ca("foreign CA", pki.KeyType.P256, 365)


@pytest.fixture(scope="session")
def server(ca: pki.Issued) -> pki.Issued:
    """A server certificate with the default SANs."""
    return pki.issue_server(ca, "server")


@pytest.fixture(scope="session")
def rsa_ca() -> pki.Issued:
    """An RSA-4096 CA (slow to generate: shared by every RSA test of a worker)."""
    return pki.issue_ca("rsa CA", pki.KeyType.RSA4096, 365)


@pytest.fixture(scope="session")
def rsa_client(rsa_ca: pki.Issued) -> pki.Issued:
    """An RSA-4096 client certificate signed by the RSA CA."""
    return pki.issue_client(rsa_ca, "rsa-alice", pki.Role.ADMIN, 30, pki.KeyType.RSA4096)


@pytest.fixture(scope="session")
def openssl() -> str:
    """Path to the openssl binary; skips the test when it is not installed."""
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("openssl is not installed")
    return path


@pytest.fixture
def ca_dir(tmp_path: Path, ca: pki.Issued) -> Path:
    """A certificate directory holding the session CA."""
    directory = tmp_path / "certs"
    pki.write_issued(directory, pki.CA_NAME, ca)
    return directory


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _element(data: bytes, offset: int) -> bytes:
    """Return the whole DER element (tag, length, content) starting at `offset`."""
    first = data[offset + 1]
    if first < 0x80:
        header, length = 2, first
    else:
        header = 2 + (first & 0x7F)
        length = int.from_bytes(data[offset + 2 : offset + header], "big")
    return data[offset : offset + header + length]


def _sign_tbs(cert: x509.Certificate, tbs: bytes, issuer_key: pki.PrivateKey) -> x509.Certificate:
    """Re-sign an edited TBSCertificate, keeping `cert`'s signature algorithm."""
    whole = cert.public_bytes(Encoding.DER)
    old_tbs = cert.tbs_certificate_bytes
    sig_alg = _element(whole, whole.index(old_tbs) + len(old_tbs))
    if isinstance(issuer_key, rsa.RSAPrivateKey):
        signature = issuer_key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = issuer_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    bit_string = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    body = tbs + sig_alg + bit_string
    return x509.load_der_x509_certificate(b"\x30" + _der_length(len(body)) + body)


def _duplicate_role(ca: pki.Issued, first: pki.Role, second: pki.Role) -> x509.Certificate:
    # cryptography's builder refuses duplicate extensions, so mint the second one under a
    # placeholder OID of the same length and rename it in the DER before re-signing.
    template = pki.issue_client(
        ca,
        "twice",
        first,
        extra_extensions=[
            x509.Extension(
                _PLACEHOLDER_OID,
                False,
                x509.UnrecognizedExtension(_PLACEHOLDER_OID, pki.encode_role(second)),
            )
        ],
    )
    tbs = template.cert.tbs_certificate_bytes
    assert tbs.count(_PLACEHOLDER_OID_DER) == 1
    assert tbs.count(_ROLE_OID_DER) == 1
    return _sign_tbs(template.cert, tbs.replace(_PLACEHOLDER_OID_DER, _ROLE_OID_DER), ca.key)


@pytest.fixture
def duplicate_role_cert(ca: pki.Issued) -> Callable[[pki.Role, pki.Role], x509.Certificate]:
    """Build a client certificate, signed by `ca`, that carries the role extension twice."""
    return lambda first, second: _duplicate_role(ca, first, second)

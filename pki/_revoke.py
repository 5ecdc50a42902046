"""Revocation: a CRL signed by the CA, kept as `crl.pem` next to it, that the server re-reads live."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from pki._errors import LoadError, PkiError
from pki._files import write_file
from pki._issue import CLOCK_SKEW, Issued
from pki._policy import issuer_problem

CRL_NAME = "crl.pem"


def crl_path(directory: Path) -> Path:
    """Where `jw-pki revoke` keeps the CA's revocation list."""
    return directory / CRL_NAME


def load_crl(path: Path) -> x509.CertificateRevocationList:
    """Load a PEM (or DER) CRL."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise LoadError(f"{path} is not a valid CRL: {exc}") from exc


def _crl_number(crl: x509.CertificateRevocationList | None) -> int:
    if crl is None:
        return 0
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def revoke(
    ca: Issued,
    certs: Sequence[x509.Certificate],
    previous: x509.CertificateRevocationList | None = None,
    *,
    at: datetime | None = None,
) -> x509.CertificateRevocationList:
    """A new CRL: everything `previous` revoked plus `certs`, which the CA itself must have issued."""
    now = (at or datetime.now(UTC)).replace(microsecond=0)
    if previous is not None and not previous.is_signature_valid(ca.key.public_key()):
        raise PkiError("the existing revocation list is not signed by this CA")
    entries: dict[int, x509.RevokedCertificate] = {r.serial_number: r for r in previous or ()}
    for cert in certs:
        if cert == ca.cert:
            raise PkiError("the CA cannot revoke itself: issue a new CA instead")
        if issuer_problem(cert, [ca.cert]) is not None:
            raise PkiError(f"certificate {cert.subject.rfc4514_string()} was not issued by this CA")
        if cert.serial_number not in entries:
            entries[cert.serial_number] = (
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(now)
                .build()
            )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - CLOCK_SKEW)
        # Nothing checks next_update: the server uses whatever the file says until it changes.
        .next_update(ca.cert.not_valid_after_utc)
        .add_extension(x509.CRLNumber(_crl_number(previous) + 1), critical=False)
    )
    for entry in entries.values():
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca.key, hashes.SHA256())


def is_revoked(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    """Whether `crl` names `cert` (same issuer and serial)."""
    return (
        crl.issuer == cert.issuer
        and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    )


def write_crl(directory: Path, crl: x509.CertificateRevocationList) -> Path:
    """Replace `crl.pem` in `directory` atomically, so the server never reads half a list."""
    path = crl_path(directory)
    write_file(path, crl.public_bytes(serialization.Encoding.PEM))
    return path

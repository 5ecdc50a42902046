"""Human- and machine-readable description of a certificate."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from pki._errors import IdentityError, RoleError
from pki._keys import describe_key
from pki._role import ROLE_OID, parse_role

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}
_SIGNATURE_NAMES = {
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: "ecdsa-with-SHA256",
    SignatureAlgorithmOID.RSA_WITH_SHA256: "sha256WithRSAEncryption",
}


def identity_of(cert: x509.Certificate) -> str:
    """Return the subject common name, the identity the server acts for."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise IdentityError(f"subject has {len(names)} common names, want exactly one")
    value = names[0].value
    if not isinstance(value, str) or not value:
        raise IdentityError("subject common name is empty or not a string")
    return value


def _general_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    return f"{type(name).__name__}:{name.value}"


@dataclass(frozen=True)
class CertificateInfo:
    """What `jw-pki inspect` shows about one certificate."""

    subject: str
    issuer: str
    serial: str
    not_before: str
    not_after: str
    key_type: str
    signature_algorithm: str
    is_ca: bool
    sans: tuple[str, ...]
    eku: tuple[str, ...]
    role: str | None
    role_error: str | None
    sha256_fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        data = asdict(self)
        data["sans"], data["eku"] = list(self.sans), list(self.eku)
        return data


def _extension(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return None


def _has_role_extension(cert: x509.Certificate) -> bool:
    try:
        return any(ext.oid == ROLE_OID for ext in cert.extensions)
    except (x509.DuplicateExtension, ValueError):
        return True


def describe(cert: x509.Certificate) -> CertificateInfo:
    """Summarise `cert`: names, validity, key, SANs, EKU and role."""
    constraints = _extension(cert, x509.BasicConstraints)
    san = _extension(cert, x509.SubjectAlternativeName)
    eku = _extension(cert, x509.ExtendedKeyUsage)
    role: str | None = None
    role_error: str | None = None
    if _has_role_extension(cert):
        try:
            role = parse_role(cert).value
        except RoleError as exc:
            role_error = str(exc)
    sig_oid = cert.signature_algorithm_oid
    sig_name = _SIGNATURE_NAMES.get(sig_oid, sig_oid.dotted_string)
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=f"{cert.serial_number:x}",
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        key_type=describe_key(cert.public_key()),
        signature_algorithm=sig_name,
        is_ca=bool(constraints is not None and constraints.ca),
        sans=tuple(_general_name(n) for n in san) if san is not None else (),
        eku=tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku) if eku else (),
        role=role,
        role_error=role_error,
        sha256_fingerprint=cert.fingerprint(hashes.SHA256()).hex(":"),
    )

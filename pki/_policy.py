"""The certificate policy: what a leaf must be before the server or client trusts it for mTLS.

RFC 5280 path validation accepts far more than a deployment of jobworker needs: a chain through any
CA-flagged certificate the CA ever signed, SHA-1 signatures, 1024-bit RSA, leaves without an EKU,
common names of a single space. The policy narrows that to the profile `pki` itself issues, so a
certificate minted by hand cannot authenticate as something the CA never meant to issue.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki._issue import NAME_RULE, valid_name

MIN_RSA_BITS = 2048
MIN_EC_BITS = 256
_STRONG_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)


class Purpose(enum.Enum):
    """What a leaf is presented for; names the extended key usage it needs."""

    CLIENT = "clientAuth"
    SERVER = "serverAuth"

    @property
    def oid(self) -> x509.ObjectIdentifier:
        """The EKU object identifier of this purpose."""
        if self is Purpose.CLIENT:
            return ExtendedKeyUsageOID.CLIENT_AUTH
        return ExtendedKeyUsageOID.SERVER_AUTH


def issuer_problem(cert: x509.Certificate, cas: Sequence[x509.Certificate]) -> str | None:
    """None if one of `cas` signed `cert` itself, else why not (intermediates are refused)."""
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return None
    return "not issued directly by the configured CA (chains through an intermediate are refused)"


def ca_flag_problem(cert: x509.Certificate) -> str | None:
    """None if the certificate is a leaf (basic constraints CA:FALSE)."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "no basic constraints: a leaf must say CA:FALSE"
    if constraints.ca:
        return "is a CA certificate (CA:TRUE): a leaf must be CA:FALSE"
    return None


def _usage_problem(cert: x509.Certificate, purpose: Purpose) -> str | None:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return f"no extended key usage: {purpose.value} is required"
    if purpose.oid not in usages:
        return f"extended key usage lacks {purpose.value}"
    return None


def key_problem(cert: x509.Certificate) -> str | None:
    """None if the public key is EC of at least P-256 or RSA of at least 2048 bits."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return f"RSA key of {key.key_size} bits: at least {MIN_RSA_BITS} are required"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size < MIN_EC_BITS:
            return f"EC key on {key.curve.name}: P-256 or a larger curve is required"
        return None
    return f"{type(key).__name__.removeprefix('_')} keys are not accepted: use EC (P-256+) or RSA (2048+)"


def signature_problem(cert: x509.Certificate) -> str | None:
    """None if the certificate is signed with SHA-256 or a stronger hash."""
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return f"signature algorithm {cert.signature_algorithm_oid.dotted_string} is not supported"
    if not isinstance(algorithm, _STRONG_HASHES):
        shown = algorithm.name.upper() if algorithm is not None else "no separate hash"
        return f"signature uses {shown}: SHA-256 or stronger is required"
    return None


def name_problem(cert: x509.Certificate) -> str | None:
    """None if the subject has exactly one CN that follows the name rule of `pki`."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return f"subject has {len(names)} common names, exactly one is required"
    value = names[0].value
    if not isinstance(value, str) or not valid_name(value):
        return f"common name is not allowed: {NAME_RULE}"
    return None


def window_problem(cert: x509.Certificate, at: datetime) -> str | None:
    """None if `at` lies inside the certificate's validity window."""
    if at < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z"
    if at > cert.not_valid_after_utc:
        return f"expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z"
    return None


def profile_problems(cert: x509.Certificate, cas: Sequence[x509.Certificate], purpose: Purpose) -> list[str]:
    """Every rule of the policy that `cert` breaks, except time (which changes by the call)."""
    try:
        _ = cert.extensions  # parsed once here, so the checks below see valid extensions
    except (x509.DuplicateExtension, ValueError) as exc:
        return [f"extensions cannot be parsed: {exc}"]
    checks = (
        issuer_problem(cert, cas),
        ca_flag_problem(cert),
        _usage_problem(cert, purpose),
        key_problem(cert),
        signature_problem(cert),
        name_problem(cert),
    )
    return [problem for problem in checks if problem]


def policy_problems(
    cert: x509.Certificate, cas: Sequence[x509.Certificate], purpose: Purpose, at: datetime
) -> list[str]:
    """Every rule of the policy that `cert` breaks at `at`; empty when it may be used."""
    problems = profile_problems(cert, cas, purpose)
    if window := window_problem(cert, at):
        problems.append(window)
    return problems

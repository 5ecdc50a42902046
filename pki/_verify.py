"""Verification of a certificate against the CA: chain, validity, EKU, role and the policy."""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki._errors import RoleError, VerificationError
from pki._policy import ca_flag_problem, key_problem, name_problem, signature_problem
from pki._role import ROLE_OID, parse_role


def _window_problem(what: str, cert: x509.Certificate, at: datetime) -> str | None:
    if at < cert.not_valid_before_utc:
        return f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z"
    if at > cert.not_valid_after_utc:
        return f"{what} expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z"
    return None


def _signature_problem(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    try:
        cert.verify_directly_issued_by(issuer)
    except ValueError:
        return "issuer name does not match the CA's subject"
    except InvalidSignature:
        return "signature does not verify with the CA's key"
    except TypeError as exc:
        return f"signature cannot be checked: {exc}"
    return None


def _extensions(cert: x509.Certificate) -> x509.Extensions | str:
    try:
        return cert.extensions
    except x509.DuplicateExtension as exc:
        if exc.oid == ROLE_OID:
            return "role: role extension appears more than once"
        return f"extension {exc.oid.dotted_string} appears more than once"
    except ValueError as exc:
        return f"extensions cannot be parsed: {exc}"


def _verify_ca(ca: x509.Certificate, at: datetime) -> list[str]:
    checks = (
        _window_problem("CA", ca, at),
        _signature_problem(ca, ca),
        key_problem(ca),
        signature_problem(ca),
    )
    problems = [p for p in checks if p]
    extensions = _extensions(ca)
    if isinstance(extensions, str):
        return [*problems, extensions]
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        problems.append("self-signed certificate is not marked as a CA")
    return problems


def _policy_problem(cert: x509.Certificate, ca: x509.Certificate, at: datetime, client: bool) -> str | None:
    builder = verification.PolicyBuilder().store(verification.Store([ca])).time(at)
    try:
        if client:
            builder.build_client_verifier().verify(cert, [])
        else:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            subject: x509.DNSName | x509.IPAddress
            if ips := san.get_values_for_type(x509.IPAddress):
                subject = x509.IPAddress(ips[0])
            else:
                dns = san.get_values_for_type(x509.DNSName)
                if not dns:
                    return "server certificate has no DNS or IP subject alternative name"
                subject = x509.DNSName(dns[0])
            builder.build_server_verifier(subject).verify(cert, [])
    except x509.ExtensionNotFound:
        return "server certificate has no subject alternative name"
    except verification.VerificationError as exc:
        return f"path validation failed: {exc}"
    return None


def verify_certificate(cert: x509.Certificate, ca: x509.Certificate, *, at: datetime | None = None) -> None:
    """Check `cert` against `ca` at `at` (default now); raise VerificationError listing failures."""
    at = (at or datetime.now(UTC)).astimezone(UTC)
    if cert == ca:
        problems = _verify_ca(ca, at)
        if problems:
            raise VerificationError(tuple(problems))
        return
    problems = [
        p
        for p in (
            _window_problem("CA", ca, at),
            _signature_problem(cert, ca),
            _window_problem("certificate", cert, at),
        )
        if p
    ]
    extensions = _extensions(cert)
    if isinstance(extensions, str):
        raise VerificationError((*problems, extensions))
    try:
        usages = list(extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = []
    client = ExtendedKeyUsageOID.CLIENT_AUTH in usages
    if not client and ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        problems.append("no serverAuth or clientAuth extended key usage")
    # The same policy the server and client apply on every connection (pki._policy).
    problems.extend(
        p
        for p in (ca_flag_problem(cert), key_problem(cert), signature_problem(cert), name_problem(cert))
        if p
    )
    if client or any(ext.oid == ROLE_OID for ext in extensions):
        try:
            parse_role(cert)
        except RoleError as exc:
            problems.append(f"role: {exc}")
    # cryptography's RFC 5280 path validation catches profile errors our own checks do not name.
    if not problems and (policy := _policy_problem(cert, ca, at, client)):
        problems.append(policy)
    if problems:
        raise VerificationError(tuple(problems))

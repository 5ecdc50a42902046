"""The certificate policy: each hand-minted certificate the CA never meant to issue is refused by name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cert_forge import forge
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

import pki


@pytest.fixture(scope="module")
def rsa1024() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def _cases(ca: pki.Issued, rsa1024: rsa.RSAPrivateKey) -> dict[str, tuple[x509.Certificate, str]]:
    intermediate = forge(ca, cn="intermediate", ca=True)
    return {
        "ca-true-client": (intermediate.cert, "is a CA certificate (CA:TRUE): a leaf must be CA:FALSE"),
        "via-intermediate": (
            forge(intermediate, cn="ada").cert,
            "not issued directly by the configured CA (chains through an intermediate are refused)",
        ),
        "sha1": (forge(ca, sha1=True).cert, "signature uses SHA1: SHA-256 or stronger is required"),
        "rsa1024": (forge(ca, key=rsa1024).cert, "RSA key of 1024 bits: at least 2048 are required"),
        "p192": (
            forge(ca, key=ec.generate_private_key(ec.SECP192R1())).cert,
            "EC key on secp192r1: P-256 or a larger curve is required",
        ),
        "no-eku": (forge(ca, eku=[]).cert, "no extended key usage: clientAuth is required"),
        "server-eku": (
            forge(ca, eku=[ExtendedKeyUsageOID.SERVER_AUTH]).cert,
            "extended key usage lacks clientAuth",
        ),
        "blank-cn": (forge(ca, cn=" ").cert, "common name is not allowed: use 1-64 characters"),
        "slash-cn": (forge(ca, cn="../ada").cert, "common name is not allowed"),
    }


@pytest.fixture(scope="module")
def cases(ca: pki.Issued, rsa1024: rsa.RSAPrivateKey) -> dict[str, tuple[x509.Certificate, str]]:
    return _cases(ca, rsa1024)


CASES = ["ca-true-client", "via-intermediate", "sha1", "rsa1024", "p192", "no-eku", "server-eku", "blank-cn"]


@pytest.mark.parametrize("case", [*CASES, "slash-cn"])
def test_policy_names_the_broken_rule(
    case: str, ca: pki.Issued, cases: dict[str, tuple[x509.Certificate, str]]
) -> None:
    cert, rule = cases[case]
    problems = pki.policy_problems(cert, [ca.cert], pki.Purpose.CLIENT, datetime.now(UTC))
    assert any(rule in p for p in problems), problems


# A serverAuth-only leaf is a valid server certificate for verify, so that case is left out.
@pytest.mark.parametrize("case", [c for c in CASES if c != "server-eku"])
def test_verify_refuses_what_the_policy_refuses(
    case: str, ca: pki.Issued, cases: dict[str, tuple[x509.Certificate, str]]
) -> None:
    cert, rule = cases[case]
    with pytest.raises(pki.VerificationError) as info:
        pki.verify_certificate(cert, ca.cert)
    # verify names the CA's own words for a foreign issuer and for a missing EKU.
    if case == "via-intermediate":
        rule = "issuer name does not match the CA's subject"
    elif case == "no-eku":
        rule = "no serverAuth or clientAuth extended key usage"
    assert rule in str(info.value)


def test_certificates_pki_issues_pass_the_policy(ca: pki.Issued, server: pki.Issued) -> None:
    now = datetime.now(UTC)
    client = pki.issue_client(ca, "alice", pki.Role.WRITER)
    assert pki.policy_problems(client.cert, [ca.cert], pki.Purpose.CLIENT, now) == []
    assert pki.policy_problems(server.cert, [ca.cert], pki.Purpose.SERVER, now) == []


def test_rsa_certificates_pass_the_policy(rsa_ca: pki.Issued, rsa_client: pki.Issued) -> None:
    assert pki.policy_problems(rsa_client.cert, [rsa_ca.cert], pki.Purpose.CLIENT, datetime.now(UTC)) == []


def test_any_of_several_configured_cas_may_be_the_issuer(
    ca: pki.Issued, foreign_ca: pki.Issued, server: pki.Issued
) -> None:
    assert pki.issuer_problem(server.cert, [foreign_ca.cert, ca.cert]) is None
    assert pki.issuer_problem(server.cert, [foreign_ca.cert]) is not None


def test_time_is_checked_against_the_moment_given(ca: pki.Issued) -> None:
    client = pki.issue_client(ca, "alice", pki.Role.WRITER, days=1)
    later = client.cert.not_valid_after_utc + timedelta(seconds=1)
    assert pki.profile_problems(client.cert, [ca.cert], pki.Purpose.CLIENT) == []
    problems = pki.policy_problems(client.cert, [ca.cert], pki.Purpose.CLIENT, later)
    assert [p.split(" ")[0] for p in problems] == ["expired"]

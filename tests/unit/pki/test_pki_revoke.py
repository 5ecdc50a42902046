"""jw-pki revoke: a CRL signed by the CA in --dir, which verify (and the server) consult."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

import pki
from pki.cli import main


def _run(runner: CliRunner, *args: str | Path, code: int = 0) -> Result:
    result = runner.invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def issued_dir(tmp_path: Path) -> Path:
    """A directory with the CA and clients alice and bob."""
    runner = CliRunner()
    directory = tmp_path / "certs"
    _run(runner, "init", "--dir", directory)
    for name in ("alice", "bob"):
        _run(runner, "issue-client", "--dir", directory, "--name", name, "--role", "writer")
    return directory


def test_revoke_by_name_writes_a_crl_signed_by_the_ca(issued_dir: Path) -> None:
    result = _run(CliRunner(), "revoke", "alice", "--dir", issued_dir)
    alice = pki.load_certificate(issued_dir / "alice.crt")
    assert f"revoked alice (serial {alice.serial_number:x})" in result.output
    crl = pki.load_crl(issued_dir / "crl.pem")
    ca = pki.load_ca(issued_dir)
    assert crl.is_signature_valid(ca.cert.public_key())
    assert pki.is_revoked(crl, alice)
    assert not pki.is_revoked(crl, pki.load_certificate(issued_dir / "bob.crt"))


def test_revoking_adds_to_the_list_and_is_idempotent(issued_dir: Path) -> None:
    runner = CliRunner()
    _run(runner, "revoke", "alice", "--dir", issued_dir)
    _run(runner, "revoke", str(issued_dir / "bob.crt"), "--dir", issued_dir)
    result = _run(runner, "revoke", "alice", "--dir", issued_dir)
    assert "(2 revoked)" in result.output
    crl = pki.load_crl(issued_dir / "crl.pem")
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == 3, "every rewrite gets a new CRL number"


def test_revoke_without_arguments_writes_an_empty_list(issued_dir: Path) -> None:
    result = _run(CliRunner(), "revoke", "--dir", issued_dir)
    assert "(0 revoked)" in result.output
    assert len(pki.load_crl(issued_dir / "crl.pem")) == 0


def test_verify_reports_a_revoked_certificate(issued_dir: Path) -> None:
    runner = CliRunner()
    _run(runner, "verify", issued_dir / "alice.crt", "--dir", issued_dir)
    _run(runner, "revoke", "alice", "--dir", issued_dir)
    result = _run(runner, "verify", issued_dir / "alice.crt", "--dir", issued_dir, code=1)
    assert "verification failed: revoked" in result.output
    _run(runner, "verify", issued_dir / "bob.crt", "--dir", issued_dir)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ca"], "the CA cannot revoke itself"),
        (["carol"], "cannot read"),
        (["../x"], "cannot read"),
    ],
)
def test_revoke_refuses_what_it_cannot_revoke(issued_dir: Path, args: list[str], message: str) -> None:
    result = _run(CliRunner(), "revoke", *args, "--dir", issued_dir, code=2 if args == ["ca"] else 1)
    assert message in result.output
    assert not (issued_dir / "crl.pem").exists()


def test_revoke_refuses_a_certificate_of_another_ca(issued_dir: Path, tmp_path: Path) -> None:
    foreign = pki.issue_ca("foreign CA")
    stranger = pki.issue_client(foreign, "mallory", pki.Role.ADMIN)
    path = tmp_path / "mallory.crt"
    path.write_bytes(stranger.cert_pem())
    result = _run(CliRunner(), "revoke", str(path), "--dir", issued_dir, code=1)
    assert "was not issued by this CA" in result.output

"""jw-pki as a user sees it: commands, output, exit codes, and openssl's opinion of the files."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import pki
from pki.cli import main


@pytest.fixture
def runner() -> CliRunner:
    """A click test runner."""
    return CliRunner()


def _run(runner: CliRunner, *args: str | Path, code: int = 0) -> Result:
    result = runner.invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    if code != 0:
        assert isinstance(result.exception, SystemExit)
    return result


def _openssl(openssl: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([openssl, *map(str, args)], capture_output=True, text=True, check=False, timeout=60)


@pytest.fixture
def issued_dir(tmp_path: Path, runner: CliRunner) -> Path:
    """A directory where init, issue-server and issue-client (alice, writer) have run."""
    directory = tmp_path / "certs"
    _run(runner, "init", "--dir", directory)
    _run(runner, "issue-server", "--dir", directory, "--name", "server")
    _run(runner, "issue-client", "--dir", directory, "--name", "alice", "--role", "writer")
    return directory


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    "command", [[], ["init"], ["issue-server"], ["issue-client"], ["inspect"], ["verify"], ["revoke"]]
)
def test_every_command_has_help(runner: CliRunner, command: list[str]) -> None:
    result = _run(runner, *command, "--help")
    assert "Usage:" in result.output
    assert "Show this message and exit." in result.output


def test_happy_path_files_and_modes(issued_dir: Path) -> None:
    names = sorted(p.name for p in issued_dir.iterdir())
    assert names == ["alice.crt", "alice.key", "ca.crt", "ca.key", "server.crt", "server.key"]
    for key in issued_dir.glob("*.key"):
        assert _mode(key) == 0o600, key
    for cert in issued_dir.glob("*.crt"):
        assert _mode(cert) == 0o644, cert
    alice = pki.load_certificate(issued_dir / "alice.crt")
    assert pki.parse_role(alice) is pki.Role.WRITER
    assert pki.identity_of(alice) == "alice"


def test_default_dir_is_certs_in_cwd(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = _run(runner, "init")
    assert "certs/ca.key" in result.output
    _run(runner, "issue-client", "--name", "bob", "--role", "reader")
    assert (tmp_path / "certs" / "bob.crt").is_file()


def test_openssl_accepts_the_chain(issued_dir: Path, openssl: str) -> None:
    result = _openssl(
        openssl,
        "verify",
        "-CAfile",
        issued_dir / "ca.crt",
        issued_dir / "server.crt",
        issued_dir / "alice.crt",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": OK") == 2
    for purpose, leaf in (("sslserver", "server.crt"), ("sslclient", "alice.crt")):
        result = _openssl(
            openssl,
            "verify",
            "-purpose",
            purpose,
            "-CAfile",
            issued_dir / "ca.crt",
            issued_dir / leaf,
        )
        assert result.returncode == 0, result.stderr


def test_openssl_reads_the_profile(issued_dir: Path, openssl: str) -> None:
    text = _openssl(openssl, "x509", "-noout", "-text", "-in", issued_dir / "alice.crt").stdout
    assert "Signature Algorithm: ecdsa-with-SHA256" in text
    assert "X509v3 Basic Constraints: critical" in text
    assert "X509v3 Key Usage: critical" in text
    assert "TLS Web Client Authentication" in text
    assert "URI:urn:jobworker:client:alice" in text
    assert "Subject: CN = alice" in text
    assert "X509v3 Subject Key Identifier" in text
    assert "X509v3 Authority Key Identifier" in text
    assert "1.2.840.10070.8.1: \n" in text  # present and, unlike the above, not critical
    text = _openssl(openssl, "x509", "-noout", "-text", "-in", issued_dir / "server.crt").stdout
    assert "DNS:localhost, IP Address:127.0.0.1, DNS:server" in text
    assert "TLS Web Server Authentication" in text
    text = _openssl(openssl, "x509", "-noout", "-text", "-in", issued_dir / "ca.crt").stdout
    assert "CA:TRUE, pathlen:0" in text
    assert "Certificate Sign, CRL Sign" in text
    assert "Subject: CN = jobworker CA" in text


def test_openssl_rejects_a_foreign_client(issued_dir: Path, openssl: str, foreign_ca: pki.Issued) -> None:
    pki.write_issued(issued_dir, "mallory", pki.issue_client(foreign_ca, "mallory", pki.Role.ADMIN))
    result = _openssl(openssl, "verify", "-CAfile", issued_dir / "ca.crt", issued_dir / "mallory.crt")
    assert result.returncode != 0


@pytest.mark.slow
def test_rsa4096_end_to_end(runner: CliRunner, tmp_path: Path, openssl: str) -> None:
    directory = tmp_path / "rsa"
    _run(runner, "init", "--dir", directory, "--key-type", "rsa4096", "--days", "100")
    _run(
        runner,
        "issue-client",
        "--dir",
        directory,
        "--name",
        "eve",
        "--role",
        "admin",
        "--days",
        "30",
    )
    info = json.loads(_run(runner, "inspect", "--json", directory / "ca.crt").output)
    assert info["key_type"] == "rsa4096"
    assert info["signature_algorithm"] == "sha256WithRSAEncryption"
    info = json.loads(_run(runner, "inspect", "--json", directory / "eve.crt").output)
    assert (info["key_type"], info["role"]) == ("p256", "admin")
    assert info["signature_algorithm"] == "sha256WithRSAEncryption"
    result = _openssl(openssl, "verify", "-CAfile", directory / "ca.crt", directory / "eve.crt")
    assert result.returncode == 0, result.stderr
    text = _openssl(openssl, "x509", "-noout", "-text", "-in", directory / "ca.crt").stdout
    assert "Public-Key: (4096 bit)" in text
    assert "Signature Algorithm: sha256WithRSAEncryption" in text
    _run(runner, "verify", "--dir", directory, directory / "eve.crt")


def test_init_refuses_to_overwrite_and_force_replaces(runner: CliRunner, tmp_path: Path) -> None:
    _run(runner, "init", "--dir", tmp_path)
    before = (tmp_path / "ca.key").read_bytes()
    result = _run(runner, "init", "--dir", tmp_path, code=1)
    assert result.output.startswith("Error: ")
    assert "already exist" in result.output
    assert "--force" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (tmp_path / "ca.key").read_bytes() == before
    _run(runner, "init", "--dir", tmp_path, "--force", "--cn", "second CA")
    assert (tmp_path / "ca.key").read_bytes() != before
    assert _mode(tmp_path / "ca.key") == 0o600
    assert pki.identity_of(pki.load_ca(tmp_path).cert) == "second CA"


def test_issue_refuses_to_overwrite(runner: CliRunner, issued_dir: Path) -> None:
    before = (issued_dir / "alice.crt").read_bytes()
    args: list[str | Path] = [
        "issue-client",
        "--dir",
        issued_dir,
        "--name",
        "alice",
        "--role",
        "admin",
    ]
    result = _run(runner, *args, code=1)
    assert "--force" in result.output
    assert (issued_dir / "alice.crt").read_bytes() == before
    _run(runner, *args, "--force")
    assert pki.parse_role(pki.load_certificate(issued_dir / "alice.crt")) is pki.Role.ADMIN
    _run(runner, "issue-server", "--dir", issued_dir, "--name", "server", code=1)


def test_issue_without_ca_is_one_line_error(runner: CliRunner, tmp_path: Path) -> None:
    result = _run(runner, "issue-client", "--dir", tmp_path, "--name", "a", "--role", "reader", code=1)
    assert "cannot read" in result.output
    assert "ca.crt" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_issue_refuses_more_than_ca_remaining_validity(runner: CliRunner, tmp_path: Path) -> None:
    _run(runner, "init", "--dir", tmp_path, "--days", "30")
    result = _run(runner, "issue-client", "--dir", tmp_path, "--name", "a", "--role", "reader", code=1)
    assert "exceeds the CA's" in result.output
    result = _run(runner, "issue-server", "--dir", tmp_path, "--name", "s", code=1)
    assert "exceeds the CA's" in result.output
    _run(runner, "issue-client", "--dir", tmp_path, "--name", "a", "--role", "reader", "--days", "29")
    assert not (tmp_path / "s.key").exists()


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["issue-client", "--name", "a", "--role", "root"], id="unknown-role"),
        pytest.param(["issue-client", "--name", "a"], id="missing-role"),
        pytest.param(["issue-client", "--role", "reader"], id="missing-name"),
        pytest.param(["issue-client", "--name", "ca", "--role", "admin"], id="reserved-name"),
        pytest.param(["issue-server", "--name", "ca"], id="reserved-server-name"),
        pytest.param(["init", "--key-type", "ed25519"], id="unknown-key-type"),
        pytest.param(["init", "--days", "0"], id="zero-days"),
        pytest.param(["frobnicate"], id="unknown-command"),
    ],
)
def test_usage_errors_exit_2(runner: CliRunner, ca_dir: Path, args: list[str]) -> None:
    _run(runner, *args, "--dir", ca_dir, code=2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--name", "../x"], "invalid name", id="bad-name"),
        pytest.param(["--name", "s", "--san", "bad name"], "invalid SAN", id="bad-san"),
    ],
)
def test_invalid_server_request_exits_1(
    runner: CliRunner, ca_dir: Path, args: list[str], message: str
) -> None:
    result = _run(runner, "issue-server", "--dir", ca_dir, *args, code=1)
    assert message in result.output


def test_issue_server_with_custom_sans(runner: CliRunner, ca_dir: Path) -> None:
    _run(
        runner,
        "issue-server",
        "--dir",
        ca_dir,
        "--name",
        "jw",
        "--san",
        "jw.example.com",
        "--san",
        "10.1.2.3",
    )
    info = json.loads(_run(runner, "inspect", "--json", ca_dir / "jw.crt").output)
    assert info["sans"] == ["DNS:jw.example.com", "IP:10.1.2.3", "DNS:jw"]


def test_inspect_json(runner: CliRunner, issued_dir: Path) -> None:
    info = json.loads(_run(runner, "inspect", "--json", issued_dir / "alice.crt").output)
    assert info["subject"] == "CN=alice"
    assert info["issuer"] == "CN=jobworker CA"
    assert info["role"] == "writer"
    assert info["role_error"] is None
    assert info["eku"] == ["clientAuth"]
    assert info["sans"] == ["URI:urn:jobworker:client:alice"]
    assert info["key_type"] == "p256"
    assert info["signature_algorithm"] == "ecdsa-with-SHA256"
    assert info["is_ca"] is False
    int(info["serial"], 16)
    not_before = datetime.fromisoformat(info["not_before"])
    not_after = datetime.fromisoformat(info["not_after"])
    assert not_before < datetime.now(UTC) < not_after
    assert timedelta(days=44) < not_after - datetime.now(UTC) <= timedelta(days=45)
    server = json.loads(_run(runner, "inspect", "--json", issued_dir / "server.crt").output)
    assert server["role"] is None
    assert server["eku"] == ["serverAuth"]
    assert server["sans"] == ["DNS:localhost", "IP:127.0.0.1", "DNS:server"]
    ca = json.loads(_run(runner, "inspect", "--json", issued_dir / "ca.crt").output)
    assert ca["is_ca"] is True
    assert ca["subject"] == ca["issuer"]


def test_inspect_text(runner: CliRunner, issued_dir: Path) -> None:
    output = _run(runner, "inspect", issued_dir / "alice.crt").output
    lines = dict(line.split(":", 1) for line in output.splitlines())
    assert lines["subject"].strip() == "CN=alice"
    assert lines["role"].strip() == "writer"
    assert lines["eku"].strip() == "clientAuth"
    assert lines["key type"].strip() == "p256"
    assert {"issuer", "serial", "not before", "not after", "sans"} <= lines.keys()


def test_inspect_shows_a_malformed_role(runner: CliRunner, ca: pki.Issued, tmp_path: Path) -> None:
    pki.write_issued(tmp_path, "bad", pki.issue_client(ca, "bad", None, role_der=b"\x0c\x02ab"))
    info = json.loads(_run(runner, "inspect", "--json", tmp_path / "bad.crt").output)
    assert info["role"] is None
    assert "unknown role 'ab'" in info["role_error"]


@pytest.mark.parametrize("content", [None, b"not a certificate"])
def test_inspect_unreadable_file_exits_1(runner: CliRunner, tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "x.crt"
    if content is not None:
        path.write_bytes(content)
    result = _run(runner, "inspect", path, code=1)
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["ca", "server", "alice"])
def test_verify_accepts_what_was_issued(runner: CliRunner, issued_dir: Path, name: str) -> None:
    result = _run(runner, "verify", "--dir", issued_dir, issued_dir / f"{name}.crt")
    assert ": OK" in result.output


def _write_client(directory: Path, name: str, **kwargs: object) -> Path:
    ca = pki.load_ca(directory)
    issued = pki.issue_client(ca, name, **kwargs)  # type: ignore[arg-type]
    return pki.write_issued(directory, name, issued)[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"role": None}, "no role extension", id="no-role"),
        pytest.param({"role": None, "role_der": b"\x13\x05admin"}, "tag 0x13", id="wrong-tag"),
        pytest.param(
            {"role": pki.Role.READER, "not_before": datetime.now(UTC) + timedelta(hours=1)},
            "not valid before",
            id="not-yet-valid",
        ),
    ],
)
def test_verify_rejects_bad_clients(
    runner: CliRunner, issued_dir: Path, kwargs: dict[str, object], message: str
) -> None:
    path = _write_client(issued_dir, "bad", **kwargs)
    result = _run(runner, "verify", "--dir", issued_dir, path, code=1)
    assert "verification failed" in result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_verify_rejects_a_foreign_certificate(
    runner: CliRunner, issued_dir: Path, foreign_ca: pki.Issued
) -> None:
    path = pki.write_issued(issued_dir, "mallory", pki.issue_client(foreign_ca, "mallory", pki.Role.ADMIN))[0]
    result = _run(runner, "verify", "--dir", issued_dir, path, code=1)
    assert "issuer name does not match" in result.output


def test_verify_without_ca_exits_1(runner: CliRunner, issued_dir: Path, tmp_path: Path) -> None:
    _run(runner, "verify", "--dir", tmp_path / "empty", issued_dir / "alice.crt", code=1)


def _jw_pki() -> Sequence[str]:
    script = Path(sys.executable).with_name("jw-pki")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pki"]


def test_done_when_sequence_in_an_empty_directory(tmp_path: Path, openssl: str) -> None:
    """The issue's acceptance check, run as a user would in a shell."""
    for args in (
        ["init"],
        ["issue-server", "--name", "server"],
        ["issue-client", "--name", "alice", "--role", "writer"],
    ):
        done = subprocess.run(
            [*_jw_pki(), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    certs = tmp_path / "certs"
    result = _openssl(
        openssl, "verify", "-CAfile", certs / "ca.crt", certs / "server.crt", certs / "alice.crt"
    )
    assert result.returncode == 0, result.stderr

"""Writing and loading credentials: modes, atomicity, overwrite refusal, key/cert pairing."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

import pki


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """Run with umask 000, so any 0600 we see is our doing and not the umask's."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("loose_umask")
def test_write_issued_modes_and_contents(tmp_path: Path, ca: pki.Issued) -> None:
    directory = tmp_path / "new" / "certs"
    cert_path, key_path = pki.write_issued(directory, "ca", ca)
    assert (cert_path, key_path) == (directory / "ca.crt", directory / "ca.key")
    assert _mode(key_path) == 0o600
    assert _mode(cert_path) == 0o644
    assert cert_path.read_bytes() == ca.cert_pem()
    assert key_path.read_bytes() == ca.key_pem()
    assert sorted(p.name for p in directory.iterdir()) == ["ca.crt", "ca.key"]


def test_write_issued_refuses_to_overwrite(tmp_path: Path, ca: pki.Issued) -> None:
    other = pki.issue_client(ca, "alice", pki.Role.READER)
    first = pki.issue_client(ca, "alice", pki.Role.ADMIN)
    cert_path, key_path = pki.write_issued(tmp_path, "alice", first)
    with pytest.raises(pki.OverwriteError, match="--force"):
        pki.write_issued(tmp_path, "alice", other)
    assert cert_path.read_bytes() == first.cert_pem()
    assert key_path.read_bytes() == first.key_pem()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.crt", "alice.key"]


@pytest.mark.parametrize("existing", ["x.crt", "x.key"])
def test_either_existing_file_blocks_the_write(tmp_path: Path, ca: pki.Issued, existing: str) -> None:
    (tmp_path / existing).write_text("keep me")
    with pytest.raises(pki.OverwriteError):
        pki.write_issued(tmp_path, "x", pki.issue_client(ca, "x", pki.Role.READER))
    assert [p.name for p in tmp_path.iterdir()] == [existing]
    assert (tmp_path / existing).read_text() == "keep me"


def test_dangling_symlink_is_not_followed(tmp_path: Path, ca: pki.Issued) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "x.key").symlink_to(target)
    with pytest.raises(pki.OverwriteError):
        pki.write_issued(tmp_path, "x", pki.issue_client(ca, "x", pki.Role.READER))
    assert not target.exists()


def test_force_replaces_files_and_keeps_key_private(tmp_path: Path, ca: pki.Issued) -> None:
    pki.write_issued(tmp_path, "bob", pki.issue_client(ca, "bob", pki.Role.READER))
    (tmp_path / "bob.key").chmod(0o644)
    replacement = pki.issue_client(ca, "bob", pki.Role.ADMIN)
    cert_path, key_path = pki.write_issued(tmp_path, "bob", replacement, force=True)
    assert key_path.read_bytes() == replacement.key_pem()
    assert pki.parse_role(pki.load_certificate(cert_path)) is pki.Role.ADMIN
    assert _mode(key_path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bob.crt", "bob.key"]


def test_write_issued_rejects_path_like_names(tmp_path: Path, ca: pki.Issued) -> None:
    with pytest.raises(pki.IssueError):
        pki.write_issued(tmp_path, "../escape", ca)
    assert not (tmp_path.parent / "escape.key").exists()


def test_unwritable_directory_is_a_pki_error(tmp_path: Path, ca: pki.Issued) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(pki.PkiError, match="cannot write"):
        pki.write_issued(blocker / "sub", "ca", ca)


def test_load_ca_round_trip(ca_dir: Path, ca: pki.Issued) -> None:
    loaded = pki.load_ca(ca_dir)
    assert loaded.cert == ca.cert
    assert loaded.key.public_key() == ca.key.public_key()


def test_load_issued_round_trip(tmp_path: Path, ca: pki.Issued) -> None:
    issued = pki.issue_client(ca, "carol", pki.Role.WRITER)
    pki.write_issued(tmp_path, "carol", issued)
    loaded = pki.load_issued(tmp_path, "carol")
    assert loaded.cert == issued.cert
    assert loaded.key_pem() == issued.key_pem()


def test_load_ca_rejects_a_mismatched_key(ca_dir: Path, foreign_ca: pki.Issued) -> None:
    (ca_dir / "ca.key").write_bytes(foreign_ca.key_pem())
    with pytest.raises(pki.LoadError, match="does not match"):
        pki.load_ca(ca_dir)


def test_load_ca_rejects_a_leaf(tmp_path: Path, server: pki.Issued) -> None:
    pki.write_issued(tmp_path, "ca", server)
    with pytest.raises(pki.LoadError, match="not a CA"):
        pki.load_ca(tmp_path)


def test_load_ca_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(pki.LoadError, match="cannot read"):
        pki.load_ca(tmp_path / "nope")


def test_load_certificate_reads_pem_and_der(tmp_path: Path, server: pki.Issued) -> None:
    der = tmp_path / "server.der"
    der.write_bytes(server.cert.public_bytes(Encoding.DER))
    pem = tmp_path / "server.pem"
    pem.write_bytes(server.cert_pem())
    assert pki.load_certificate(der) == server.cert
    assert pki.load_certificate(str(pem)) == server.cert


@pytest.mark.parametrize("content", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nxx\n"])
def test_load_certificate_rejects_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.crt"
    path.write_bytes(content)
    with pytest.raises(pki.LoadError, match="not a valid certificate"):
        pki.load_certificate(path)


def test_load_private_key_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(b"nope")
    with pytest.raises(pki.LoadError, match="not an unencrypted PEM private key"):
        pki.load_private_key(path)


def test_write_works_where_hard_links_are_unsupported(
    tmp_path: Path, ca: pki.Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    cert_path, key_path = pki.write_issued(tmp_path, "ca", ca)
    assert cert_path.read_bytes() == ca.cert_pem()
    assert key_path.read_bytes() == ca.key_pem()
    assert _mode(key_path) == 0o600
    with pytest.raises(pki.OverwriteError):
        pki.write_issued(tmp_path, "ca", ca)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]

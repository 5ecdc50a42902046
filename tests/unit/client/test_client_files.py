"""Certificate, key and CA files are checked before any connection, with one-line reasons."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from client_fakes import Credentials
from cryptography.hazmat.primitives import serialization

import pki
from jobworker.client import Client, ClientConfig, ConfigError

# Nothing listens here: every test must fail before the client tries to connect.
UNUSED = "127.0.0.1:9"


@pytest.fixture
def config(creds: Credentials) -> ClientConfig:
    return creds.config(UNUSED)


def fails(config: ClientConfig) -> str:
    with pytest.raises(ConfigError) as info:
        Client(config)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("field", ["ca", "cert", "key"])
def test_missing_file_names_flag_and_path(config: ClientConfig, tmp_path: Path, field: str) -> None:
    missing = tmp_path / f"missing.{field}"
    message = fails(replace(config, **{field: missing}))
    assert f"(--{field})" in message
    assert f"{missing}: no such file" in message


def test_directory_instead_of_file(config: ClientConfig, tmp_path: Path) -> None:
    assert "is a directory" in fails(replace(config, ca=tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of their mode")
def test_unreadable_file(config: ClientConfig, tmp_path: Path) -> None:
    locked = tmp_path / "locked.key"
    locked.write_bytes(config.key.read_bytes())
    locked.chmod(0)
    assert "permission denied" in fails(replace(config, key=locked))


def test_empty_file(config: ClientConfig, tmp_path: Path) -> None:
    empty = tmp_path / "empty.crt"
    empty.write_bytes(b"")
    assert "file is empty" in fails(replace(config, cert=empty))


def test_key_given_as_certificate(config: ClientConfig) -> None:
    assert "not a PEM certificate" in fails(replace(config, cert=config.key))


def test_certificate_given_as_key(config: ClientConfig) -> None:
    assert "not a PEM private key" in fails(replace(config, key=config.cert))


def test_encrypted_key(config: ClientConfig, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(config.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert "encrypted" in fails(replace(config, key=encrypted))


def test_key_of_another_certificate(config: ClientConfig, creds: Credentials) -> None:
    assert "does not belong to" in fails(replace(config, key=creds.key("rita")))


def test_expired_client_certificate(config: ClientConfig, tmp_path: Path) -> None:
    ca = pki.issue_ca("old CA", not_before=datetime.now(UTC) - timedelta(days=30))
    old = pki.issue_client(
        ca,
        "old",
        pki.Role.READER,
        not_before=datetime.now(UTC) - timedelta(days=20),
        not_after=datetime.now(UTC) - timedelta(days=1),
    )
    cert, key = pki.write_issued(tmp_path, "old", old)
    assert "expired on" in fails(replace(config, cert=cert, key=key))


def test_not_yet_valid_client_certificate(config: ClientConfig, tmp_path: Path) -> None:
    ca = pki.issue_ca("future CA")
    future = pki.issue_client(
        ca,
        "future",
        pki.Role.READER,
        not_before=datetime.now(UTC) + timedelta(days=1),
        not_after=datetime.now(UTC) + timedelta(days=2),
    )
    cert, key = pki.write_issued(tmp_path, "future", future)
    assert "is not valid before" in fails(replace(config, cert=cert, key=key))


def test_timeout_must_be_positive(config: ClientConfig) -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        Client(config, timeout=0)

"""Client TLS material: read and check the CA, certificate and key before any connection attempt."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from jobworker.client._config import ClientConfig
from jobworker.client._errors import ConfigError


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes of the trusted CA(s), our certificate and our private key."""

    ca: bytes
    cert: bytes
    key: bytes

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Build grpc channel credentials for mutual TLS."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path}: is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"{what} {path}: permission denied") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from exc
    if not data.strip():
        raise ConfigError(f"{what} {path}: file is empty")
    return data


def _certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"{what} {path}: not a PEM certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"{what} {path}: cannot parse the certificate ({exc})") from exc


def _check_validity(cert: x509.Certificate, path: Path, what: str, now: datetime) -> None:
    if now > cert.not_valid_after_utc:
        raise ConfigError(f"{what} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
    if now < cert.not_valid_before_utc:
        raise ConfigError(f"{what} {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z")


def load_tls_material(config: ClientConfig, *, now: datetime | None = None) -> TlsMaterial:
    """Read and check the files of `config`; raise ConfigError with a one-line reason."""
    moment = now or datetime.now(UTC)
    ca_what, cert_what, key_what = "CA certificate (--ca)", "certificate (--cert)", "key (--key)"
    ca = _read(config.ca, ca_what)
    cert = _read(config.cert, cert_what)
    key = _read(config.key, key_what)
    for anchor in _certificates(ca, config.ca, ca_what):
        _check_validity(anchor, config.ca, ca_what, moment)
    ours = _certificates(cert, config.cert, cert_what)[0]
    _check_validity(ours, config.cert, cert_what, moment)
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except TypeError:
        raise ConfigError(
            f"{key_what} {config.key}: the key is encrypted; jw needs an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{key_what} {config.key}: not a PEM private key") from exc
    if private_key.public_key() != ours.public_key():
        raise ConfigError(f"{key_what} {config.key} does not belong to {config.cert}")
    return TlsMaterial(ca=ca, cert=cert, key=key)

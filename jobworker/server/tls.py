"""Server TLS credentials: mTLS with a required, CA-verified client certificate, reloadable live.

grpc asks `CredentialReloader.fetch` before every new connection's handshake; it answers with fresh
material after a SIGHUP (`request_reload`) or when one of the files changed. Material that fails to
load (a half-written rotation, a key that does not match its certificate) is logged and skipped: the
server keeps the last good configuration until the files change again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jobworker.server.jsonlog import fields

_log = logging.getLogger(__name__)


class CredentialError(Exception):
    """A certificate, key or CA file cannot be used."""


@dataclass(frozen=True)
class CredentialFiles:
    """Where the server's certificate chain, its key and the client CA bundle live."""

    cert: Path
    key: Path
    ca: Path

    def signature(self) -> tuple[tuple[int, int, int, int] | None, ...]:
        """Identify the files' current contents cheaply (inode, size, mtime); None if missing."""
        result: list[tuple[int, int, int, int] | None] = []
        for path in (self.cert, self.key, self.ca):
            try:
                st = os.stat(path)
            except OSError:
                result.append(None)
            else:
                result.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(result)


@dataclass(frozen=True)
class CredentialMaterial:
    """Validated PEM bytes, ready for grpc."""

    cert_chain: bytes
    key: bytes
    ca: bytes
    subject: str
    client_cas: tuple[str, ...]
    # Parsed once: the per-call certificate policy checks the client's issuer against these.
    client_ca_certs: tuple[x509.Certificate, ...] = ()

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        """The grpc certificate configuration for this material."""
        return grpc.ssl_server_certificate_configuration([(self.key, self.cert_chain)], self.ca)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CredentialError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CredentialError(f"{what} {path} holds no valid PEM certificate") from exc
    return certs


def load_material(files: CredentialFiles) -> CredentialMaterial:
    """Read and check the three files; raise CredentialError with a one-line reason."""
    chain_pem = _read(files.cert, "certificate")
    key_pem = _read(files.key, "key")
    ca_pem = _read(files.ca, "CA bundle")
    chain = _certificates(chain_pem, files.cert, "certificate")
    cas = _certificates(ca_pem, files.ca, "CA bundle")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CredentialError(f"key {files.key} is not an unencrypted PEM private key") from exc
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != chain[0].public_key().public_bytes(der, public):
        raise CredentialError(f"key {files.key} does not match certificate {files.cert}")
    return CredentialMaterial(
        cert_chain=chain_pem,
        key=key_pem,
        ca=ca_pem,
        subject=chain[0].subject.rfc4514_string(),
        client_cas=tuple(ca.subject.rfc4514_string() for ca in cas),
        client_ca_certs=tuple(cas),
    )


class CredentialReloader:
    """Server credentials whose certificate, key and client CAs are re-read without a restart."""

    def __init__(self, files: CredentialFiles) -> None:
        self._files = files
        self._lock = threading.Lock()
        self._signature = files.signature()
        self._material = load_material(files)
        self._pending: grpc.ServerCertificateConfiguration | None = None

    @property
    def material(self) -> CredentialMaterial:
        """The material currently served (or about to be, from the next connection on)."""
        return self._material

    def client_cas(self) -> tuple[x509.Certificate, ...]:
        """The client CAs currently trusted, for the per-call certificate policy."""
        return self._material.client_ca_certs

    def credentials(self) -> grpc.ServerCredentials:
        """grpc server credentials that require and verify a client certificate."""
        # The stubs say the fetcher never returns None; grpc documents None as "no change".
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], self.fetch)
        return grpc.dynamic_ssl_server_credentials(
            self._material.configuration(), fetcher, require_client_authentication=True
        )

    def request_reload(self) -> bool:
        """Re-read the files now (SIGHUP); return whether new material was accepted."""
        with self._lock:
            return self._reload_locked(self._files.signature())

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's per-connection callback: new configuration if the files changed, else None."""
        try:
            with self._lock:
                signature = self._files.signature()
                if signature != self._signature:
                    self._reload_locked(signature)
                pending, self._pending = self._pending, None
                return pending
        except Exception:
            # An exception here would fail the handshake of an innocent client; keep serving.
            _log.exception("credential reload check failed")
            return None

    def _reload_locked(self, signature: tuple[tuple[int, int, int, int] | None, ...]) -> bool:
        # Remembered even on failure, so a broken rotation is logged once and not per handshake.
        self._signature = signature
        try:
            material = load_material(self._files)
        except CredentialError as exc:
            _log.error("credentials not reloaded, keeping the previous ones", extra=fields(error=str(exc)))
            return False
        self._material = material
        self._pending = material.configuration()
        _log.info(
            "credentials reloaded",
            extra=fields(subject=material.subject, client_cas=list(material.client_cas)),
        )
        return True

"""The revocation list (`--revoked`): a CRL signed by a client CA, re-read whenever the file changes.

Every call asks `RevocationList.is_revoked`, which costs one stat() of the file: a certificate revoked
with `jw-pki revoke` is refused from the next call on, on connections that are already open too. A
file that fails to load (half written, signed by another CA) is logged and the last good list stays.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509

from jobworker.server.jsonlog import fields

_log = logging.getLogger(__name__)

_Signature = tuple[int, int, int, int] | None
_Revoked = frozenset[tuple[x509.Name, int]]


class RevocationError(Exception):
    """The revocation list cannot be read, parsed or trusted."""


def _signature(path: Path) -> _Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def load_revoked(path: Path, cas: Sequence[x509.Certificate]) -> _Revoked:
    """The (issuer, serial) pairs the CRL at `path` revokes; it must be signed by one of `cas`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RevocationError(f"cannot read revocation list {path}: {exc.strerror or exc}") from exc
    try:
        crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise RevocationError(f"revocation list {path} is not a valid CRL") from exc
    signers = [ca for ca in cas if ca.subject == crl.issuer]
    if not signers:
        raise RevocationError(
            f"revocation list {path} is issued by {crl.issuer.rfc4514_string()}, not a client CA"
        )
    # A CA rolled over under the same name leaves two candidates; either key may have signed the list.
    # Only RSA and EC CAs exist here (pki issues no others), which is what the stubs ask for.
    if not any(crl.is_signature_valid(ca.public_key()) for ca in signers):  # type: ignore[arg-type]
        raise RevocationError(
            f"revocation list {path} is not signed by the key of {crl.issuer.rfc4514_string()}"
        )
    return frozenset((crl.issuer, entry.serial_number) for entry in crl)


class RevocationList:
    """The revoked certificates named by one CRL file, reloaded when the file changes."""

    def __init__(self, path: Path, cas: Callable[[], Sequence[x509.Certificate]]) -> None:
        self._path = path
        self._cas = cas
        self._lock = threading.Lock()
        self._signature = _signature(path)
        self._revoked = load_revoked(path, cas())

    @property
    def path(self) -> Path:
        """The CRL file."""
        return self._path

    @property
    def size(self) -> int:
        """How many certificates are revoked."""
        return len(self._revoked)

    def is_revoked(self, cert: x509.Certificate) -> bool:
        """Whether `cert` is on the list as it is on disk now."""
        signature = _signature(self._path)
        if signature != self._signature:
            with self._lock:
                if signature != self._signature:
                    self._reload_locked(signature)
        return (cert.issuer, cert.serial_number) in self._revoked

    def request_reload(self) -> bool:
        """Re-read the file now (SIGHUP); return whether a new list was accepted."""
        with self._lock:
            return self._reload_locked(_signature(self._path))

    def _reload_locked(self, signature: _Signature) -> bool:
        # Remembered even on failure, so a broken file is logged once and not on every call.
        self._signature = signature
        try:
            revoked = load_revoked(self._path, self._cas())
        except RevocationError as exc:
            _log.error("revocation list not reloaded, keeping the previous one", extra=fields(error=str(exc)))
            return False
        self._revoked = revoked
        _log.info("revocation list reloaded", extra=fields(path=str(self._path), revoked=len(revoked)))
        return True

"""Reading and writing certificates and keys: atomic, 0600 keys, no silent overwrite."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki._errors import LoadError, OverwriteError, PkiError
from pki._issue import Issued, check_name
from pki._keys import PrivateKey, ensure_supported_key

CA_NAME = "ca"
_KEY_MODE = 0o600
_CERT_MODE = 0o644
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV})


def issued_paths(directory: Path, name: str) -> tuple[Path, Path]:
    """Return the `(NAME.crt, NAME.key)` paths for `name` in `directory`."""
    check_name(name)
    return directory / f"{name}.crt", directory / f"{name}.key"


def _write_atomic(path: Path, data: bytes, mode: int, *, force: bool) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp creates 0600 already; fchmod before writing so a key is never readable.
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(tmp, path)
        else:
            # link() refuses an existing target (even a dangling symlink): no check-then-write race.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OverwriteError(f"{path} already exists (use --force to replace it)") from None
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                # Some mounts (vfat, certain FUSE/bind mounts) lack hard links: check, then rename.
                if path.exists() or path.is_symlink():
                    raise OverwriteError(f"{path} already exists (use --force to replace it)") from None
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_file(path: Path, data: bytes) -> None:
    """Replace a public file (mode 0644) atomically: readers see the old or the new contents, never a mix."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, data, _CERT_MODE, force=True)
    except OSError as exc:
        raise PkiError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_issued(directory: Path, name: str, issued: Issued, *, force: bool = False) -> tuple[Path, Path]:
    """Write `NAME.crt` (0644) and `NAME.key` (0600) atomically; return their paths."""
    cert_path, key_path = issued_paths(directory, name)
    if not force:
        existing = [str(p) for p in (cert_path, key_path) if p.exists() or p.is_symlink()]
        if existing:
            verb = "exists" if len(existing) == 1 else "exist"
            raise OverwriteError(f"{' and '.join(existing)} already {verb} (use --force to replace)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(key_path, issued.key_pem(), _KEY_MODE, force=force)
        try:
            _write_atomic(cert_path, issued.cert_pem(), _CERT_MODE, force=force)
        except BaseException:
            # Lost a race for NAME.crt: do not leave behind a key without its certificate.
            if not force:
                key_path.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise PkiError(f"cannot write {name} into {directory}: {exc.strerror or exc}") from exc
    return cert_path, key_path


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LoadError(f"cannot read {path}: {exc.strerror or exc}") from exc


def load_certificate(path: Path | str) -> x509.Certificate:
    """Load a PEM (or DER) certificate from `path`."""
    data = _read(Path(path))
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise LoadError(f"{path} is not a valid certificate: {exc}") from exc


def load_private_key(path: Path | str) -> PrivateKey:
    """Load an unencrypted PEM private key (EC or RSA) from `path`."""
    data = _read(Path(path))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise LoadError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    try:
        return ensure_supported_key(key)
    except PkiError as exc:
        raise LoadError(f"{path}: {exc}") from exc


def load_issued(directory: Path, name: str) -> Issued:
    """Load `NAME.crt` and `NAME.key` from `directory` and check that they belong together."""
    cert_path, key_path = issued_paths(directory, name)
    cert = load_certificate(cert_path)
    key = load_private_key(key_path)
    if cert.public_key() != key.public_key():
        raise LoadError(f"{key_path} does not match {cert_path}")
    return Issued(cert=cert, key=key)


def load_ca(directory: Path) -> Issued:
    """Load the CA (`ca.crt`, `ca.key`) from `directory`."""
    ca = load_issued(directory, CA_NAME)
    try:
        constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        constraints = None
    if constraints is None or not constraints.ca:
        raise LoadError(f"{directory / 'ca.crt'} is not a CA certificate")
    return ca

"""Key generation and key-type naming."""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from pki._errors import PkiError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyType(enum.Enum):
    """Key algorithms `pki` generates."""

    P256 = "p256"
    RSA4096 = "rsa4096"


def generate_key(key_type: KeyType) -> PrivateKey:
    """Generate a fresh private key of `key_type`."""
    if key_type is KeyType.P256:
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


def describe_key(public_key: PublicKeyTypes) -> str:
    """Name a public key: `p256`, `rsa4096`, or a descriptive name for anything else."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if isinstance(public_key.curve, ec.SECP256R1):
            return KeyType.P256.value
        return f"ec-{public_key.curve.name}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa{public_key.key_size}"
    return type(public_key).__name__


def ensure_supported_key(key: object) -> PrivateKey:
    """Return `key` if it is an EC or RSA private key, else raise PkiError."""
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return key
    raise PkiError(f"unsupported private key type {type(key).__name__} (want EC or RSA)")

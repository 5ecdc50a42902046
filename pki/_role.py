"""The role extension: encoder and the strict parser the server relies on."""

from __future__ import annotations

import enum

from cryptography import x509

from pki._errors import RoleError

ROLE_OID = x509.ObjectIdentifier("1.2.840.10070.8.1")

_UTF8STRING_TAG = 0x0C


class Role(enum.Enum):
    """Roles a client certificate can carry, weakest first."""

    READER = "reader"
    WRITER = "writer"
    ADMIN = "admin"
    # A jw-server of a fleet: it calls other nodes on behalf of the callers it forwards for.
    NODE = "node"


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def encode_role(role: Role) -> bytes:
    """Encode `role` as the extension value: one DER UTF8String."""
    text = role.value.encode("utf-8")
    return bytes([_UTF8STRING_TAG]) + _der_length(len(text)) + text


def parse_role_der(value: bytes) -> Role:
    """Parse a raw extension value that must be exactly one DER UTF8String naming a role."""
    if len(value) < 2:
        raise RoleError(f"role extension value is {len(value)} byte(s), too short for a UTF8String")
    if value[0] != _UTF8STRING_TAG:
        raise RoleError(f"role extension has tag 0x{value[0]:02x}, want UTF8String (0x0c)")
    first = value[1]
    if first < 0x80:
        length, header = first, 2
    elif first == 0x80:
        raise RoleError("role extension uses an indefinite length, which DER forbids")
    else:
        count = first & 0x7F
        # Role names are tiny; more than four length octets can only be an attack or garbage.
        if count > 4 or len(value) < 2 + count:
            raise RoleError("role extension has a truncated or oversized length field")
        octets = value[2 : 2 + count]
        length, header = int.from_bytes(octets, "big"), 2 + count
        if octets[0] == 0 or length < 0x80:
            raise RoleError("role extension length is not minimally encoded (DER)")
    content_len = len(value) - header
    if content_len < length:
        raise RoleError(f"role extension is truncated: length says {length}, {content_len} present")
    if content_len > length:
        raise RoleError(f"role extension has {content_len - length} trailing byte(s)")
    try:
        text = value[header:].decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise RoleError("role extension is not valid UTF-8") from exc
    try:
        return Role(text)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise RoleError(f"unknown role {text[:32]!r} (allowed: {allowed})") from None


def parse_role(cert: x509.Certificate) -> Role:
    """Return the role of `cert`; raise RoleError unless it has exactly one well-formed role."""
    try:
        extensions = cert.extensions
    except x509.DuplicateExtension as exc:
        if exc.oid == ROLE_OID:
            raise RoleError("role extension appears more than once") from exc
        raise RoleError(f"certificate repeats extension {exc.oid.dotted_string}") from exc
    except ValueError as exc:
        raise RoleError(f"certificate extensions cannot be parsed: {exc}") from exc
    found = [ext for ext in extensions if ext.oid == ROLE_OID]
    if not found:
        raise RoleError("certificate has no role extension")
    if len(found) > 1:
        raise RoleError("role extension appears more than once")
    value = found[0].value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise RoleError("role extension was decoded as a known extension type")
    return parse_role_der(value.value)

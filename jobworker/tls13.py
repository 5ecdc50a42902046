"""Pins grpc's TLS stack (BoringSSL) to TLS 1.3 in this process; must run before `import grpc`.

Shared by the server (which imports it first thing and always pins) and the client library (which pins
unless the variable is already set, so a deliberate override stays possible).

grpcio has no TLS version setting. BoringSSL's cipher list never touches the TLS 1.3 suites, so a
TLS 1.2 list that nothing can negotiate leaves TLS 1.3 as the only working version. PSK suites need a
pre-shared-key callback, which neither grpc servers nor grpc clients install, so this works for EC and
RSA keys alike. grpc reads the variable once, while `import grpc` initialises it; set later it has no
effect, which is why the auth wrapper also rejects every call not made over TLS 1.3.
"""

from __future__ import annotations

import os
import sys

CIPHER_SUITES_ENV = "GRPC_SSL_CIPHER_SUITES"
TLS12_UNUSABLE_SUITES = "PSK-AES128-CBC-SHA"


def pin_tls13(*, override: bool = True) -> bool:
    """Set the cipher list; return whether it takes effect (False when grpc is already imported).

    With override=False an existing value is kept.
    """
    pinned_before = os.environ.get(CIPHER_SUITES_ENV) == TLS12_UNUSABLE_SUITES
    if override or CIPHER_SUITES_ENV not in os.environ:
        os.environ[CIPHER_SUITES_ENV] = TLS12_UNUSABLE_SUITES
    if "grpc" not in sys.modules:
        return True
    # grpc read the variable when it was imported: only a value that was already there can be in force.
    return pinned_before

"""The certificate policy on every call: pki's rules against the current client CAs, time, revocation.

grpc's C core does the handshake and its chain validation, and gives Python only the peer's leaf (in
the auth context) afterwards; it has no hook to refuse a handshake from Python. So the policy is
enforced per call: a certificate that passes the handshake but breaks a rule (a CA:TRUE client, a
leaf under an intermediate, SHA-1, RSA-1024, no EKU, a bad CN) gets UNAUTHENTICATED with the rule it
broke on every call, and never reaches a handler. Checking every call, not every connection, is also
what stops an expired or revoked certificate on a connection that is already open.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from cryptography import x509

import pki
from jobworker.server.revocation import RevocationList

Clock = Callable[[], datetime]


@functools.lru_cache(maxsize=4096)
def _profile_problems(cert: x509.Certificate, cas: tuple[x509.Certificate, ...]) -> tuple[str, ...]:
    # What does not change with time, cached per certificate and CA bundle: signatures are not cheap.
    return tuple(pki.profile_problems(cert, cas, pki.Purpose.CLIENT))


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PeerPolicy:
    """Decides whether a client certificate may make a call now."""

    def __init__(
        self,
        cas: Callable[[], Sequence[x509.Certificate]],
        revocation: RevocationList | None = None,
        clock: Clock = _utc_now,
    ) -> None:
        self._cas = cas
        self._revocation = revocation
        self._clock = clock

    def problems(self, cert: x509.Certificate) -> list[str]:
        """Every rule `cert` breaks at this moment; empty when the call may proceed."""
        problems = list(_profile_problems(cert, tuple(self._cas())))
        if window := pki.window_problem(cert, self._clock()):
            problems.append(window)
        if self._revocation is not None and self._revocation.is_revoked(cert):
            problems.append("revoked")
        return problems

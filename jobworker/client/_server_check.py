"""The certificate policy applied to the server: pki's rules for a serverAuth leaf, checked once per client.

grpc's Python API gives a client no access to the certificate the server presented, and no hook into
its handshake. So before its first call a client lets grpc connect with a health check (it carries
nothing; grpc verifies the chain and the host name, and reports its own errors if it cannot connect),
then makes one TLS 1.3 handshake of its own to the same address (Python's ssl, our client
certificate, ALPN h2), reads the server's leaf and applies the policy: issued directly by the CA,
CA:FALSE, serverAuth, key and signature strength, CN. A server that breaks a rule, or that cannot be
probed, is refused before any request is sent. It is a check of what the server at that address
presents, not a pin of grpc's own connection.
"""

from __future__ import annotations

import socket
import ssl
import threading
from datetime import UTC, datetime

from cryptography import x509

import pki
from jobworker.client._config import ClientConfig
from jobworker.client._errors import ConnectionFailedError


def _host_port(target: str) -> tuple[str, int] | None:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def fetch_server_certificate(config: ClientConfig, timeout: float) -> x509.Certificate:
    """The leaf the server presents at `config.server`; ConnectionFailedError if none is seen."""
    address = _host_port(config.server)
    if address is None:
        raise ConnectionFailedError(f"cannot check the server certificate of {config.server}: no port")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # grpc has verified chain and host on its own connection; this handshake only reads the leaf, and
    # must see weak ones (SHA-1, RSA-1024) that OpenSSL's defaults would hide behind a failed handshake.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_cert_chain(str(config.cert), str(config.key))
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection(address, timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=address[0]) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError) as exc:
        raise ConnectionFailedError(
            f"cannot check the server certificate of {config.server}: {getattr(exc, 'reason', None) or exc}"
        ) from exc
    if not der:
        raise ConnectionFailedError(f"cannot check the server certificate of {config.server}: none was sent")
    return x509.load_der_x509_certificate(der)


def server_problems(cert: x509.Certificate, config: ClientConfig) -> list[str]:
    """Every rule of the policy that the server's certificate breaks now."""
    cas = x509.load_pem_x509_certificates(config.ca.read_bytes())
    return pki.policy_problems(cert, cas, pki.Purpose.SERVER, datetime.now(UTC))


class ServerCheck:
    """Applies the policy to the server's certificate once, before the first call of a client."""

    def __init__(self, config: ClientConfig, timeout: float) -> None:
        self._config = config
        self._timeout = timeout
        self._lock = threading.Lock()
        self._done = False

    @property
    def done(self) -> bool:
        """Whether the server's certificate has passed already."""
        return self._done

    def ensure(self) -> None:
        """Raise ConnectionFailedError if the server's certificate breaks the policy."""
        if self._done:
            return
        with self._lock:
            if self._done:
                return
            # Fails closed: a server that lets grpc in but not the probe is not trusted either.
            cert = fetch_server_certificate(self._config, self._timeout)
            problems = server_problems(cert, self._config)
            if problems:
                raise ConnectionFailedError(
                    f"server certificate of {self._config.server} refused: {'; '.join(problems)}"
                )
            self._done = True

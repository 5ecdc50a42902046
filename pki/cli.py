"""`jw-pki`: mint and check every credential of a jobworker deployment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from pki._errors import PkiError, VerificationError
from pki._files import CA_NAME, issued_paths, load_ca, load_certificate, write_issued
from pki._inspect import describe
from pki._issue import DEFAULT_SERVER_SANS, issue_ca, issue_client, issue_etcd, issue_node, issue_server
from pki._keys import KeyType
from pki._revoke import crl_path, is_revoked, load_crl, revoke, write_crl
from pki._role import Role
from pki._verify import verify_certificate


class _PkiGroup(click.Group):
    """Turns library errors into one-line ClickExceptions (exit 1) instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PkiError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}") from exc


_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("certs"),
    show_default=True,
    help="Directory holding ca.crt/ca.key and the issued NAME.crt/NAME.key files.",
)
_key_type_option = click.option(
    "--key-type",
    type=click.Choice([k.value for k in KeyType]),
    default=KeyType.P256.value,
    show_default=True,
    help="Key algorithm of the new key (rsa4096 is slow to generate).",
)
_force_option = click.option("--force", is_flag=True, help="Replace existing files instead of refusing.")
_name_option = click.option(
    "--name",
    required=True,
    help="Subject CN and file stem (NAME.crt, NAME.key): 1-64 of A-Z a-z 0-9 . _ -",
)


def _check_not_ca_name(name: str) -> None:
    if name == CA_NAME:
        raise click.BadParameter("'ca' is reserved for the CA's own files", param_hint="--name")


def _echo_written(paths: tuple[Path, Path]) -> None:
    click.echo(f"wrote {paths[0]}")
    click.echo(f"wrote {paths[1]} (mode 0600)")


@click.group(cls=_PkiGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Create the CA and issue server and client certificates for jobworker."""


@main.command()
@_dir_option
@_key_type_option
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=3650,
    show_default=True,
    help="CA validity in days.",
)
@click.option("--cn", default="jobworker CA", show_default=True, help="CA subject common name.")
@_force_option
def init(directory: Path, key_type: str, days: int, cn: str, force: bool) -> None:
    """Create a self-signed CA (ca.crt, ca.key) in --dir."""
    issued = issue_ca(cn, KeyType(key_type), days)
    _echo_written(write_issued(directory, CA_NAME, issued, force=force))


@main.command("issue-server", short_help="Issue a server certificate (serverAuth).")
@_dir_option
@_name_option
@click.option(
    "--san",
    "sans",
    multiple=True,
    metavar="DNS-OR-IP",
    help="Subject alternative name; repeat for several. "
    f"Default: {', '.join(DEFAULT_SERVER_SANS)}. NAME is always added.",
)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=365,
    show_default=True,
    help="Validity in days; must fit in the CA's remaining validity.",
)
@_key_type_option
@_force_option
def issue_server_command(
    directory: Path, name: str, sans: tuple[str, ...], days: int, key_type: str, force: bool
) -> None:
    """Issue a TLS server certificate (serverAuth) signed by the CA."""
    _check_not_ca_name(name)
    ca = load_ca(directory)
    issued = issue_server(ca, name, sans or DEFAULT_SERVER_SANS, days, KeyType(key_type))
    _echo_written(write_issued(directory, name, issued, force=force))


@main.command("issue-client", short_help="Issue a client certificate with a role.")
@_dir_option
@_name_option
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role if r is not Role.NODE]),
    required=True,
    help="Role the server grants this client (node certificates come from issue-node).",
)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=45,
    show_default=True,
    help="Validity in days; must fit in the CA's remaining validity.",
)
@_key_type_option
@_force_option
def issue_client_command(
    directory: Path, name: str, role: str, days: int, key_type: str, force: bool
) -> None:
    """Issue a TLS client certificate (clientAuth) carrying NAME as identity and a role."""
    _check_not_ca_name(name)
    ca = load_ca(directory)
    issued = issue_client(ca, name, Role(role), days, KeyType(key_type))
    _echo_written(write_issued(directory, name, issued, force=force))


def _peer_command(name: str, short_help: str, doc: str, issue: Any) -> None:
    @main.command(name, short_help=short_help, help=doc)
    @_dir_option
    @_name_option
    @click.option(
        "--san",
        "sans",
        multiple=True,
        metavar="DNS-OR-IP",
        help="Subject alternative name (the address peers dial); repeat for several. "
        f"Default: {', '.join(DEFAULT_SERVER_SANS)}. NAME is always added.",
    )
    @click.option(
        "--days",
        type=click.IntRange(min=1),
        default=365,
        show_default=True,
        help="Validity in days; must fit in the CA's remaining validity.",
    )
    @_key_type_option
    @_force_option
    def command(
        directory: Path, name: str, sans: tuple[str, ...], days: int, key_type: str, force: bool
    ) -> None:
        _check_not_ca_name(name)
        ca = load_ca(directory)
        issued = issue(ca, name, sans or DEFAULT_SERVER_SANS, days, KeyType(key_type))
        _echo_written(write_issued(directory, name, issued, force=force))


_peer_command(
    "issue-node",
    "Issue a fleet node certificate (role node).",
    "Issue a jw-server's certificate for a fleet: serverAuth and clientAuth with role node, so it serves "
    "clients and forwards their calls to other nodes (which accept an asserted caller only from a node). "
    "The server also presents it to etcd.",
    issue_node,
)
_peer_command(
    "issue-etcd",
    "Issue an etcd member certificate (no role).",
    "Issue an etcd member's certificate for its client and peer URLs: serverAuth and clientAuth, no role "
    "(it can never call jobworker).",
    issue_etcd,
)


@main.command("inspect", short_help="Show what a certificate contains.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def inspect_command(file: Path, as_json: bool) -> None:
    """Show subject, issuer, serial, validity, key type, SANs, EKU and role of FILE."""
    info = describe(load_certificate(file)).to_dict()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    labels = {"sha256_fingerprint": "sha256", "signature_algorithm": "signature"}
    for field, value in info.items():
        if field == "role_error" and value is None:
            continue
        if isinstance(value, list):
            value = ", ".join(value) or "-"
        elif value is None:
            value = "-"
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        click.echo(f"{labels.get(field, field).replace('_', ' ') + ':':<14}{value}")


@main.command("verify", short_help="Verify a certificate against the CA.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_dir_option
def verify_command(file: Path, directory: Path) -> None:
    """Verify FILE against the CA in --dir: chain, validity, EKU, role, policy and revocation (exit 1)."""
    cert = load_certificate(file)
    ca = load_certificate(directory / f"{CA_NAME}.crt")
    try:
        verify_certificate(cert, ca)
    except VerificationError as exc:
        raise click.ClickException(f"{file}: verification failed: {exc}") from exc
    crl = crl_path(directory)
    if cert != ca and crl.exists() and is_revoked(load_crl(crl), cert):
        raise click.ClickException(f"{file}: verification failed: revoked (listed in {crl})")
    info = describe(cert)
    what = "CA" if info.is_ca else ", ".join(info.eku)
    role = f", role {info.role}" if info.role else ""
    click.echo(f"{file}: OK ({what}{role}; valid until {info.not_after})")


@main.command("revoke", short_help="Revoke certificates (CRL in --dir).")
@click.argument("certificates", nargs=-1, metavar="[NAME|CERT]...")
@_dir_option
def revoke_command(certificates: tuple[str, ...], directory: Path) -> None:
    """Add each NAME (NAME.crt in --dir) or CERT file to the CA's revocation list, crl.pem in --dir.

    Without arguments, writes the list as it is (an empty one the first time), for jw-server --revoked.
    A running server refuses a revoked certificate from its next call on.
    """
    ca = load_ca(directory)
    certs = [load_certificate(_certificate_path(directory, given)) for given in certificates]
    path = crl_path(directory)
    previous = load_crl(path) if path.exists() else None
    crl = revoke(ca, certs, previous)
    write_crl(directory, crl)
    for given, cert in zip(certificates, certs, strict=True):
        click.echo(f"revoked {given} (serial {cert.serial_number:x})")
    click.echo(f"wrote {path} ({len(crl)} revoked)")


def _certificate_path(directory: Path, given: str) -> Path:
    # A path names a file; a bare name is a certificate jw-pki issued into --dir.
    if "/" in given or given.endswith((".crt", ".pem")):
        return Path(given)
    if given == CA_NAME:
        raise click.BadParameter("the CA cannot revoke itself", param_hint="NAME")
    return issued_paths(directory, given)[0]

"""`make run`: a development jw-server from this checkout, in the foreground, without Docker.

In order: mint what is missing or unusable of the development PKI in ./certs (the same files the compose
`pki` service mints, so `make up` and `make run` share them), make `jw` with no options reach this server as
`writer` (a profile in a config file only when there is none yet, otherwise one `export` line to paste), then
replace this process with `jw-server` on 127.0.0.1:50051, state under build/. Everything is kept for the next
run. Development tooling, not product: it lives outside the jobworker and pki packages and is not installed.
"""

from __future__ import annotations

import signal
import sys


def _quit_quietly(_signum: int, _frame: object) -> None:
    sys.exit(130)


# First of all: Ctrl-C before jw-server runs (the imports below alone take a few hundred ms) ends the
# run with the status a shell gives a Ctrl-C, 130, instead of a KeyboardInterrupt traceback.
signal.signal(signal.SIGINT, _quit_quietly)

import errno
import os
import pwd
import re
import shlex
import socket
import subprocess
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import click
from cryptography import x509

import pki
from jobworker.client import ClientConfig, ConfigError, default_config_path, load_config

REPO = Path(__file__).resolve().parent.parent
PROFILE = "dev"
CLIENT_ROLES = ("admin", "writer", "reader")
# The compose pki service's SANs (docker/pki-init.sh), so either tool accepts the other's server certificate.
SERVER_SANS = ("localhost", "127.0.0.1", "server")
# A certificate that would expire within this margin is reissued now rather than fail mid-session.
RENEW_MARGIN = timedelta(days=1)
# Without root: namespaces, cgroups and strict isolation all need it. A flag the installed jw-server
# lacks is left out, so this works with servers from before and after it gained the flag.
UNPRIVILEGED_FLAGS: tuple[tuple[str, ...], ...] = (("--isolation", "none"), ("--no-cgroups",))
# Stale job cgroups under a server's prefix are removed at its start-up: keep clear of a real server's.
CGROUP_PREFIX = "jobworker-dev"


class RunError(click.ClickException):
    """An expected failure (port in use, permissions): one line on stderr, exit 1, no traceback."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"make run: {self.format_message()}", file=file, err=True)


def say(message: str) -> None:
    click.echo(f"make run: {message}")


def shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it: shorter, and what users typed."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class InvokingUser:
    """Who ran `sudo make run`: they own the certificates and the profile, so their own jw can use them."""

    uid: int
    gid: int
    home: Path


def invoking_user(environ: Mapping[str, str]) -> InvokingUser | None:
    if os.geteuid() != 0 or not environ.get("SUDO_UID", "").isdigit():
        return None
    uid = int(environ["SUDO_UID"])
    gid = int(environ["SUDO_GID"]) if environ.get("SUDO_GID", "").isdigit() else uid
    try:
        home = Path(pwd.getpwuid(uid).pw_dir)
    except KeyError:
        return None
    return InvokingUser(uid, gid, home)


# --- certificates ---------------------------------------------------------------------------------


def _unusable(cert: x509.Certificate, ca: x509.Certificate) -> str | None:
    """Why `cert` cannot serve (verified against `ca`, valid a while longer); None when it can."""
    now = datetime.now(UTC)
    try:
        pki.verify_certificate(cert, ca, at=now)
    except pki.VerificationError as exc:
        return str(exc)
    if cert.not_valid_after_utc < now + RENEW_MARGIN:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z"
    return None


def _load_ca(directory: Path) -> tuple[pki.Issued | None, str]:
    """The CA when it can sign, else None and why not."""
    if not _exists(directory, pki.CA_NAME):
        return None, "missing"
    try:
        ca = pki.load_ca(directory)
    except pki.LoadError as exc:
        return None, str(exc)
    problem = _unusable(ca.cert, ca.cert)
    return (None, problem) if problem else (ca, "")


def _leaf_problem(directory: Path, name: str, ca: pki.Issued, role: str | None) -> str | None:
    """Why NAME.crt/key cannot be used as this deployment's `name` (None: it can)."""
    if not _exists(directory, name):
        return "missing"
    try:
        leaf = pki.load_issued(directory, name)
    except pki.LoadError as exc:
        return str(exc)
    if problem := _unusable(leaf.cert, ca.cert):
        return problem
    info = pki.describe(leaf.cert)
    if role is not None and info.role != role:
        return f"role is {info.role}, not {role}"
    if role is None and not set(SERVER_SANS) <= {san.split(":", 1)[-1] for san in info.sans}:
        return f"SANs {', '.join(info.sans)} lack one of {', '.join(SERVER_SANS)}"
    return None


def _exists(directory: Path, name: str) -> bool:
    return any(p.exists() or p.is_symlink() for p in pki.issued_paths(directory, name))


def ensure_pki(directory: Path) -> list[str]:
    """Mint what is missing or unusable in `directory`; return what was minted and why (empty: all reused)."""
    minted: list[str] = []
    ca, problem = _load_ca(directory)
    if ca is None:
        ca = pki.issue_ca("jobworker CA", pki.KeyType.P256, 3650)
        # A new CA invalidates every certificate signed by the old one: all are reissued below.
        pki.write_issued(directory, pki.CA_NAME, ca, force=_exists(directory, pki.CA_NAME))
        minted.append("ca" if problem == "missing" else f"ca ({problem})")
        problems: dict[str, str | None] = dict.fromkeys(("server", *CLIENT_ROLES), "new CA")
    else:
        problems = {"server": _leaf_problem(directory, "server", ca, None)}
        problems.update({r: _leaf_problem(directory, r, ca, r) for r in CLIENT_ROLES})
    for name, why in problems.items():
        if why is None:
            continue
        if name == "server":
            issued = pki.issue_server(ca, "server", SERVER_SANS, 365, pki.KeyType.P256)
        else:
            issued = pki.issue_client(ca, name, pki.Role(name), 45, pki.KeyType.P256)
        pki.write_issued(directory, name, issued, force=_exists(directory, name))
        minted.append(f"{name} ({why})" if why not in ("missing", "new CA") else name)
    return minted


def hand_over(paths: Sequence[Path], user: InvokingUser) -> None:
    """chown what we made for the user behind sudo, as `make up` hands ./certs to JW_UID."""
    for path in paths:
        if path.exists():
            os.chown(path, user.uid, user.gid)


# --- the jw profile -------------------------------------------------------------------------------


def _toml_string(value: str) -> str:
    escaped = []
    for char in value:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def profile_text(config: ClientConfig) -> str:
    fields = {"server": config.server, "ca": config.ca, "cert": config.cert, "key": config.key}
    lines = [
        f"# Written by `make run` in {REPO}: its development server, as the writer client.",
        f"default_profile = {_toml_string(PROFILE)}",
        "",
        f"[profiles.{PROFILE}]",
        *(f"{name} = {_toml_string(str(value))}" for name, value in fields.items()),
    ]
    text = "\n".join(lines) + "\n"
    # Cheap insurance that the escaping above is what tomllib (and so jw) reads back.
    assert tomllib.loads(text)["profiles"][PROFILE]["key"] == str(config.key)
    return text


def export_line(config: ClientConfig) -> str:
    pairs = {"JW_SERVER": config.server, "JW_CA": config.ca, "JW_CERT": config.cert, "JW_KEY": config.key}
    return "export " + " ".join(f"{k}={shlex.quote(str(v))}" for k, v in pairs.items())


def _same(a: ClientConfig, b: ClientConfig) -> bool:
    return a.server == b.server and all(
        Path(x).resolve() == Path(y).resolve() for x, y in ((a.ca, b.ca), (a.cert, b.cert), (a.key, b.key))
    )


def _resolved(environ: Mapping[str, str], path: Path) -> ClientConfig | None:
    """What `jw` with no options would connect with, under `environ` (None: it could not)."""
    try:
        return load_config(environ=environ, config_path=path)
    except ConfigError:
        return None


def _write_new(path: Path, text: str, user: InvokingUser | None) -> bool:
    """Create `path` with `text` unless it exists; True when we created it."""
    created = [p for p in reversed(path.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: a file that appeared meanwhile is the user's, not ours to replace.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    if user is not None:
        hand_over([*created, path], user)
    return True


def ensure_profile(
    wanted: ClientConfig, path: Path, environ: Mapping[str, str], user: InvokingUser | None
) -> None:
    """Make plain `jw` reach `wanted`: write a new config file, or say the one export line to use instead.

    An existing config file is the user's and is never rewritten, not even to add a profile: the standard
    library has no TOML writer that keeps comments, and a changed default_profile would silently send their
    other work to this server.
    """
    exists = path.exists() or path.is_symlink()
    written = not exists and _write_new(path, profile_text(wanted), user)
    if (from_file := _resolved({}, path)) is None or not _same(from_file, wanted):
        say(f"{path} is yours and does not send plain `jw` here (left unchanged); to use this server:")
        click.echo(export_line(wanted))
        return
    in_effect = _resolved(environ, path)
    if in_effect is None or not _same(in_effect, wanted):
        shadowing = [k for k in ("JW_PROFILE", "JW_SERVER", "JW_CA", "JW_CERT", "JW_KEY") if environ.get(k)]
        say(f"{' '.join(shadowing)} set in your environment override the profile; unset them, or use:")
        click.echo(export_line(wanted))
    elif written:
        say(f"wrote profile {PROFILE!r} (the default) to {path}: jw needs no options")
    else:
        say(f"jw uses profile {PROFILE!r} of {path}: it needs no options")


# --- the server -----------------------------------------------------------------------------------


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    if int(port) == 0:
        raise click.BadParameter("needs a fixed port: jw's profile must name it", param_hint="--listen")
    return host.strip("[]"), int(port)


def check_port(listen: str) -> None:
    """Refuse early, in one line, what jw-server would refuse with a JSON log line: a port already taken."""
    host, port = split_listen(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RunError(f"cannot resolve {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As gRPC does, so a port left in TIME_WAIT by the last run counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise RunError(
                    f"{listen} is in use (by a `make run` in another terminal? by `make up`'s container? "
                    "`make down` stops that); or: make run RUN_ARGS='--listen 127.0.0.1:PORT'"
                ) from None
            raise RunError(f"cannot listen on {listen}: {exc.strerror}") from None


def check_state_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create {shown(state_dir)}: {exc.strerror}") from None
    for directory in (state_dir, state_dir / "jobs"):
        if directory.exists() and not os.access(directory, os.W_OK | os.X_OK):
            raise RunError(
                f"{shown(directory)} is not writable by you (left by `sudo make run`?): "
                "remove it, or pass RUN_ARGS='--state-dir DIR'"
            )


def server_options(jw_server: Path) -> set[str]:
    """The long options the installed jw-server accepts, read from its --help."""
    try:
        result = subprocess.run(
            [str(jw_server), "--help"], capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RunError(f"{shown(jw_server)} --help failed: {exc} (try `make venv`)") from None
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", result.stdout))


def server_command(jw_server: Path, listen: str, certs: Path, state_dir: Path) -> list[str]:
    command = [str(jw_server), "--listen", listen, "--state-dir", str(state_dir)]
    for option, name in (("--cert", "server.crt"), ("--key", "server.key"), ("--ca", "ca.crt")):
        command += [option, str(certs / name)]
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--listen", default="127.0.0.1:50051", help="HOST:PORT the server listens on; the profile names it."
)
@click.option(
    "--certs",
    type=click.Path(file_okay=False, path_type=Path),
    default=REPO / "certs",
    help="Development PKI: what is valid is reused, the rest minted.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=REPO / "build" / "run" / "state",
    help="The server's state directory (job records and output).",
)
@click.option(
    "--unprivileged",
    is_flag=True,
    help="Even as root, run jw-server as a run without root does: no cgroups, and --isolation none.",
)
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- JW-SERVER-OPTIONS]")
def main(listen: str, certs: Path, state_dir: Path, unprivileged: bool, server_args: tuple[str, ...]) -> None:
    """Mint dev certificates, write a jw profile and run jw-server in the foreground (Ctrl-C stops it)."""
    certs, state_dir = certs.absolute(), state_dir.absolute()
    host, port = split_listen(listen)
    user = invoking_user(os.environ)
    jw_server = Path(sys.executable).parent / "jw-server"
    try:
        minted = ensure_pki(certs)
        if user is not None:
            names = (pki.CA_NAME, "server", *CLIENT_ROLES)
            hand_over([certs, *(p for n in names for p in pki.issued_paths(certs, n))], user)
    except (pki.PkiError, OSError) as exc:
        raise RunError(f"certificates in {shown(certs)}: {exc}") from None
    roles = ", ".join(CLIENT_ROLES)
    say(
        f"minted {', '.join(minted)} in {shown(certs)}"
        if minted
        else f"reusing CA, server, {roles} in {shown(certs)}"
    )

    client_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    wanted = ClientConfig(
        server=f"{client_host}:{port}" if ":" not in client_host else f"[{client_host}]:{port}",
        ca=certs / "ca.crt",
        cert=certs / "writer.crt",
        key=certs / "writer.key",
    )
    if user is not None:
        # Under sudo the profile is for the user's own terminal (their jw), not root's.
        config_path = Path(os.environ.get("XDG_CONFIG_HOME") or user.home / ".config") / "jw" / "config.toml"
    else:
        config_path = default_config_path(os.environ)
    try:
        ensure_profile(wanted, config_path, os.environ, user)
    except OSError as exc:
        say(f"cannot write {config_path}: {exc.strerror}; use this server with:")
        click.echo(export_line(wanted))

    check_state_dir(state_dir)
    check_port(listen)
    root = os.geteuid() == 0
    command = server_command(jw_server, listen, certs, state_dir)
    if root and not unprivileged:
        command += ["--cgroup-prefix", CGROUP_PREFIX]
    else:
        known = server_options(jw_server)
        flags = [word for flag in UNPRIVILEGED_FLAGS if flag[0] in known for word in flag]
        command += flags
        if root:
            # --unprivileged: only what the flags switch off; without --isolation, root still has namespaces.
            lacking = "no limits" + (" and no sandbox" if "--isolation" in flags else "")
            say(f"--unprivileged, so jw-server runs with {' '.join(flags)}: jobs get {lacking}")
        else:
            lacking = "jobs get no namespaces and no limits (both need root: sudo make run)"
            say(f"not root, so jw-server runs with {' '.join(flags)}: {lacking}")
    command += server_args
    where = f"jw-server on {listen}, state in {shown(state_dir)}"
    say(f"{where}; Ctrl-C stops it. In another terminal: .venv/bin/jw run -- echo hello")
    sys.stdout.flush()
    sys.stderr.flush()
    # exec, not a child: Ctrl-C and SIGTERM reach jw-server itself, which shuts down cleanly and exits 0.
    # Until its handler is installed (about half a second of imports and start-up) SIGINT would be a
    # KeyboardInterrupt traceback from wherever it landed; ignored here, an early Ctrl-C does nothing
    # (Python keeps an inherited SIG_IGN for SIGINT) and the next one stops the server. Jobs are not
    # affected: the engine resets SIGINT to the default before it execs a command.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.execv(jw_server, command)
    except OSError as exc:
        signal.signal(signal.SIGINT, _quit_quietly)
        raise RunError(f"cannot run {shown(jw_server)}: {exc.strerror} (try `make venv`)") from None


if __name__ == "__main__":
    main(prog_name="dev/run.py")

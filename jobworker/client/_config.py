"""Connection settings: resolved per field as explicit value > environment > config-file profile.

The config file is TOML at `$XDG_CONFIG_HOME/jw/config.toml` (default `~/.config/jw/config.toml`):

    default_profile = "dev"

    [profiles.dev]
    server = "127.0.0.1:50051"
    ca = "certs/ca.crt"          # relative paths resolve against the file's directory
    cert = "certs/alice.crt"
    key = "certs/alice.key"
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jobworker.client._errors import ConfigError

ENV_SERVER = "JW_SERVER"
ENV_CA = "JW_CA"
ENV_CERT = "JW_CERT"
ENV_KEY = "JW_KEY"
ENV_PROFILE = "JW_PROFILE"

_FIELDS = ("server", "ca", "cert", "key")
_ENV_BY_FIELD = {"server": ENV_SERVER, "ca": ENV_CA, "cert": ENV_CERT, "key": ENV_KEY}
_FLAG_BY_FIELD = {"server": "--server", "ca": "--ca", "cert": "--cert", "key": "--key"}
# host:port, [v6]:port, or an explicit grpc scheme such as unix:/path.
_TARGET = re.compile(r"(?:[^\s/:]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}|(?:unix|unix-abstract|dns|ipv4|ipv6):\S+")


@dataclass(frozen=True)
class ClientConfig:
    """Where the server is and which files prove who we are."""

    server: str
    ca: Path
    cert: Path
    key: Path


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Return `$XDG_CONFIG_HOME/jw/config.toml`, falling back to `~/.config/jw/config.toml`."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "jw" / "config.toml"


def _read_profile(path: Path, profile: str | None, *, required: bool) -> dict[str, str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"profile {profile!r} requested but {path} does not exist") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    profiles = document.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"config file {path}: 'profiles' must be a table of [profiles.NAME]")
    if profile is None:
        default = document.get("default_profile")
        if default is None:
            return {}
        if not isinstance(default, str):
            raise ConfigError(f"config file {path}: default_profile must be a string")
        profile = default
    table = profiles.get(profile)
    if table is None:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(f"config file {path} has no profile {profile!r} (profiles: {known})")
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [profiles.{profile}] must be a table")
    unknown = sorted(set(table) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"config file {path}: [profiles.{profile}] has unknown key(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(_FIELDS)})"
        )
    values: dict[str, str] = {}
    for name, value in table.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config file {path}: profiles.{profile}.{name} must be a string")
        if name == "server":
            values[name] = value
        else:
            # Relative to the file, so a profile keeps working from any working directory.
            values[name] = str(path.parent / Path(value).expanduser())
    return values


def load_config(
    *,
    server: str | None = None,
    ca: Path | str | None = None,
    cert: Path | str | None = None,
    key: Path | str | None = None,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> ClientConfig:
    """Resolve each setting from the explicit argument, then `JW_*` variables, then the profile."""
    env = os.environ if environ is None else environ
    explicit = {"server": server, "ca": ca, "cert": cert, "key": key}
    values: dict[str, str] = {}
    for name in _FIELDS:
        given = explicit[name]
        if given is not None and str(given):
            values[name] = str(given)
        elif env.get(_ENV_BY_FIELD[name]):
            values[name] = env[_ENV_BY_FIELD[name]]
    profile = profile or env.get(ENV_PROFILE) or None
    if profile is not None or len(values) < len(_FIELDS):
        path = config_path or default_config_path(env)
        from_file = _read_profile(path, profile, required=profile is not None)
        for name, value in from_file.items():
            values.setdefault(name, value)
    missing = [name for name in _FIELDS if name not in values]
    if missing:
        hints = "; ".join(f"{_FLAG_BY_FIELD[name]} or {_ENV_BY_FIELD[name]}" for name in missing)
        raise ConfigError(
            f"missing connection setting(s) {', '.join(missing)}: pass {hints}, "
            f"or set them in a profile of {config_path or default_config_path(env)}"
        )
    target = values["server"].strip()
    if not _TARGET.fullmatch(target):
        raise ConfigError(f"server address {target!r} is not HOST:PORT")
    return ClientConfig(
        server=target,
        ca=Path(values["ca"]).expanduser(),
        cert=Path(values["cert"]).expanduser(),
        key=Path(values["key"]).expanduser(),
    )

"""Connection settings: flag > env > config-file profile, and one-line errors for bad settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobworker.client import ClientConfig, ConfigError, default_config_path, load_config

FULL_ENV = {
    "JW_SERVER": "env-host:2",
    "JW_CA": "/env/ca.crt",
    "JW_CERT": "/env/me.crt",
    "JW_KEY": "/env/me.key",
}


def write_config(directory: Path, text: str) -> Path:
    path = directory / "jw" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


PROFILES = """
default_profile = "dev"

[profiles.dev]
server = "file-host:3"
ca = "certs/ca.crt"
cert = "certs/dev.crt"
key = "/abs/dev.key"

[profiles.prod]
server = "prod-host:4"
ca = "/prod/ca.crt"
cert = "/prod/me.crt"
key = "/prod/me.key"
"""


def test_flags_win_over_env_and_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, PROFILES)
    config = load_config(
        server="flag-host:1",
        ca="/flag/ca.crt",
        cert=Path("/flag/me.crt"),
        key="/flag/me.key",
        environ=FULL_ENV,
        config_path=path,
    )
    assert config == ClientConfig(
        server="flag-host:1",
        ca=Path("/flag/ca.crt"),
        cert=Path("/flag/me.crt"),
        key=Path("/flag/me.key"),
    )


def test_env_wins_over_file_field_by_field(tmp_path: Path) -> None:
    path = write_config(tmp_path, PROFILES)
    config = load_config(server="flag-host:1", environ={"JW_CA": "/env/ca.crt"}, config_path=path)
    assert config.server == "flag-host:1"
    assert config.ca == Path("/env/ca.crt")
    # The rest come from the default profile; relative paths resolve against the file's directory.
    assert config.cert == path.parent / "certs" / "dev.crt"
    assert config.key == Path("/abs/dev.key")


def test_named_profile_by_flag_and_by_env(tmp_path: Path) -> None:
    path = write_config(tmp_path, PROFILES)
    by_flag = load_config(profile="prod", environ={"JW_PROFILE": "dev"}, config_path=path)
    by_env = load_config(environ={"JW_PROFILE": "prod"}, config_path=path)
    assert by_flag.server == by_env.server == "prod-host:4"


def test_default_path_follows_xdg_config_home(tmp_path: Path) -> None:
    write_config(tmp_path, PROFILES)
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert default_config_path(env) == tmp_path / "jw" / "config.toml"
    assert load_config(environ=env).server == "file-host:3"


def test_file_is_not_read_when_flags_and_env_suffice(tmp_path: Path) -> None:
    path = write_config(tmp_path, "this is = not [toml")
    assert load_config(environ=FULL_ENV, config_path=path).server == "env-host:2"


def test_missing_settings_name_every_way_to_give_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(server="h:1", environ={}, config_path=tmp_path / "absent.toml")
    message = str(info.value)
    assert "ca, cert, key" in message
    assert "--ca or JW_CA" in message
    assert "absent.toml" in message
    assert info.value.code == "CONFIG"


def test_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    path = write_config(tmp_path, PROFILES)
    with pytest.raises(ConfigError, match=r"no profile 'staging' \(profiles: dev, prod\)"):
        load_config(profile="staging", environ={}, config_path=path)


def test_requested_profile_without_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"profile 'dev' requested but .* does not exist"):
        load_config(profile="dev", environ=FULL_ENV, config_path=tmp_path / "none.toml")


def test_invalid_toml_is_reported_with_the_path(tmp_path: Path) -> None:
    path = write_config(tmp_path, "default_profile = [")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(environ={}, config_path=path)


def test_unknown_profile_keys_are_rejected(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[profiles.dev]\nserver = "h:1"\nsever = "typo"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(profile="dev", environ={}, config_path=path)


def test_non_string_value_is_rejected(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[profiles.dev]\nserver = 50051\n")
    with pytest.raises(ConfigError, match="must be a string"):
        load_config(profile="dev", environ={}, config_path=path)


@pytest.mark.parametrize("server", ["localhost", "http://host:1", "host:", "host:port"])
def test_server_must_be_host_and_port(server: str) -> None:
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        load_config(server=server, environ=FULL_ENV)


@pytest.mark.parametrize("server", ["localhost:50051", "10.0.0.1:1", "[::1]:50051", "unix:/run/jw"])
def test_server_address_forms_accepted(server: str) -> None:
    assert load_config(server=server, environ=FULL_ENV).server == server

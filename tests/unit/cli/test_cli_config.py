"""Connection settings through the CLI: option > environment > config-file profile."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from cli_fixtures import Jw


@pytest.fixture
def dead_server() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def write_profiles(jw: Jw, default: str, dead_server: str) -> Path:
    """Profiles `good` (alice, relative paths) and `dead` (nothing listens)."""
    config_dir = jw.config_home / "jw"
    config_dir.mkdir()
    (config_dir / "certs").symlink_to(jw.credentials.directory)
    path = config_dir / "config.toml"
    path.write_text(
        f'default_profile = "{default}"\n\n'
        f'[profiles.good]\nserver = "{jw.server}"\n'
        'ca = "certs/ca.crt"\ncert = "certs/alice.crt"\nkey = "certs/alice.key"\n\n'
        f'[profiles.dead]\nserver = "{dead_server}"\n'
        'ca = "certs/ca.crt"\ncert = "certs/rita.crt"\nkey = "certs/rita.key"\n'
    )
    return path


def test_default_profile_with_paths_relative_to_the_file(jw: Jw, dead_server: str) -> None:
    write_profiles(jw, "good", dead_server)
    result = jw("health", user=None)
    assert (result.exit_code, result.stdout) == (0, "SERVING\n")


def test_profile_option_and_variable(jw: Jw, dead_server: str) -> None:
    write_profiles(jw, "dead", dead_server)
    assert jw("health", user=None).exit_code == 3
    assert jw("--profile", "good", "health", user=None).exit_code == 0
    assert jw("health", user=None, env={"JW_PROFILE": "good"}).exit_code == 0


def test_environment_wins_over_the_profile(jw: Jw, dead_server: str) -> None:
    write_profiles(jw, "dead", dead_server)
    # The dead profile's reader identity would be refused to start jobs; alice's env wins.
    result = jw(
        "start",
        "--",
        "true",
        user=None,
        env={"JW_SERVER": jw.server}
        | {
            "JW_CERT": str(jw.credentials.cert("alice")),
            "JW_KEY": str(jw.credentials.key("alice")),
        },
    )
    assert result.exit_code == 0, result.stderr


def test_option_wins_over_the_environment(jw: Jw, dead_server: str) -> None:
    assert jw("health", env={"JW_SERVER": dead_server}).exit_code == 3
    assert jw("--server", jw.server, "health", env={"JW_SERVER": dead_server}).exit_code == 0


def test_unknown_profile(jw: Jw, dead_server: str) -> None:
    write_profiles(jw, "good", dead_server)
    result = jw("--profile", "staging", "health", user=None)
    assert result.exit_code == 2
    assert "no profile 'staging' (profiles: dead, good)" in result.stderr

"""Names, labels and id prefixes through `jw` against a real server.

Every command that takes a job takes its full id, its name or a unique id prefix. Nothing about another
owner's jobs leaks through a name or a prefix: such a reference is "not found" exactly like an unknown one.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import pytest
from cli_fixtures import Jw, start_server


def _name(stem: str) -> str:
    # The server is shared by every test of this worker, and names are unique per owner.
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def _start(jw: Jw, *args: str, user: str = "alice") -> str:
    result = jw("start", *args, user=user)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def _ended(jw: Jw, *args: str, user: str = "alice") -> str:
    job_id = _start(jw, *args, "--", "true", user=user)
    assert jw("wait", job_id, user=user).exit_code == 0
    return job_id


def test_a_named_labelled_job_shows_both_everywhere(jw: Jw) -> None:
    name = _name("web")
    result = jw(
        "run", "--name", name, "-l", "app=web", "--label", "example.com/tier=front", "--", "echo", "hi"
    )
    assert (result.exit_code, result.stdout) == (0, "hi\n"), result.stderr
    text = jw("status", name).stdout
    assert f"Name:     {name}" in text
    assert "Labels:   app=web example.com/tier=front" in text
    data = json.loads(jw("status", "--json", name).stdout)
    assert data["name"] == name
    assert data["labels"] == {"app": "web", "example.com/tier": "front"}
    header, *rows = jw("list", "--name", name).stdout.splitlines()
    assert header.split()[:2] == ["ID", "NAME"]
    assert len(rows) == 1
    assert rows[0].split()[:3] == [data["id"], name, "alice"]
    (listed,) = json.loads(jw("list", "--json", "--name", name).stdout)
    assert (listed["name"], listed["labels"]) == (name, data["labels"])


def test_start_json_carries_name_and_labels(jw: Jw) -> None:
    name = _name("j")
    data = json.loads(jw("start", "--json", "--name", name, "-l", "k=v", "--", "true").stdout)
    assert (data["name"], data["labels"]) == (name, {"k": "v"})
    unnamed = json.loads(jw("start", "--json", "--", "true").stdout)
    assert (unnamed["name"], unnamed["labels"]) == (None, {})


def test_every_job_command_takes_a_name_and_a_prefix(jw: Jw) -> None:
    name = _name("svc")
    script = "trap 'echo usr1' USR1; echo up; while :; do sleep 0.05; done"
    job_id = _start(jw, "--name", name, "--", "sh", "-c", script)
    # The trap is set once "up" is printed: only then may USR1 come.
    deadline = time.monotonic() + 30
    while not jw("logs", name).stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    for ref in (name, job_id[:12], job_id.upper()):
        assert jw("status", "--json", ref).exit_code == 0
        assert json.loads(jw("status", "--json", ref).stdout)["id"] == job_id
    assert jw("kill", "-s", "USR1", name).stdout == f"{job_id}\n"
    assert jw("stop", "--grace", "1s", job_id[:10]).stdout == f"{job_id}\n"
    assert jw("wait", name).exit_code == 128 + signal.SIGTERM
    assert jw("logs", name).stdout.startswith("up\n")
    assert jw("logs", job_id[:8]).stdout.startswith("up\n")
    assert jw("rm", name).stdout == f"{job_id}\n"
    assert jw("status", name).exit_code == 4


def test_a_duplicate_name_is_refused_and_deleting_frees_it(jw: Jw) -> None:
    name = _name("build")
    first = _ended(jw, "--name", name)
    again = jw("start", "--name", name, "--", "true")
    assert again.exit_code == 6
    assert f"a job named '{name}' already exists ({first})" in again.stderr
    # Names are unique per owner: bob may use it.
    _ended(jw, "--name", name, user="bob")
    assert jw("rm", first).exit_code == 0
    second = _ended(jw, "--name", name)
    assert json.loads(jw("status", "--json", name).stdout)["id"] == second


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--name", "-bad"], "invalid job name '-bad'"),
        (["--name", "a b"], "invalid job name 'a b'"),
        (["--name", "x" * 129], "invalid job name"),
        (["--name", "6ba7b810-9dad-41d1-80b4-00c04fd430c8"], "not shaped like a job id"),
        (["-l", "Bad Key=v"], "invalid label key 'Bad Key'"),
        (["-l", "UPPER.com/k=v"], "invalid label key 'UPPER.com/k'"),
        (["-l", "k=" + "v" * 257], "the value is longer than 256 characters"),
        (["-l", "k=a\tb"], "control characters"),
    ],
)
def test_invalid_names_and_labels_are_usage_errors_naming_them(
    jw: Jw, args: list[str], fragment: str
) -> None:
    result = jw("start", *args, "--", "true")
    assert result.exit_code == 2
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("label", ["novalue", "=v"])
def test_a_label_without_key_or_value_is_refused_by_jw(jw: Jw, label: str) -> None:
    result = jw("start", "-l", label, "--", "true")
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.stderr


def test_a_label_given_twice_differently_is_refused(jw: Jw) -> None:
    result = jw("list", "-l", "a=1", "-l", "a=2")
    assert result.exit_code == 2
    assert "--label a is given twice" in result.stderr


def test_list_label_selector_needs_every_label(jw: Jw) -> None:
    run = uuid.uuid4().hex[:8]
    both = _start(jw, "-l", f"run={run}", "-l", "tier=db", "--", "true")
    one = _start(jw, "-l", f"run={run}", "--", "true")
    _start(jw, "-l", f"run={run}", "-l", "tier=db", "--", "true", user="bob")
    assert set(jw("list", "-q", "-l", f"run={run}").stdout.split()) == {both, one}
    assert jw("list", "-q", "-l", f"run={run}", "-l", "tier=db").stdout.split() == [both]
    assert jw("list", "-q", "-l", f"run={run}", "-l", "tier=web").stdout == ""
    assert len(jw("list", "-q", "-l", f"run={run}", user="adam").stdout.split()) == 3
    bad = jw("list", "-l", "bad key=1")
    assert bad.exit_code == 2
    assert "invalid label selector key 'bad key'" in bad.stderr


def test_prune_takes_a_label_selector(jw: Jw) -> None:
    run = uuid.uuid4().hex[:8]
    gone = _ended(jw, "-l", f"prune={run}")
    kept = _ended(jw, "-l", "prune=other")
    result = jw("prune", "-l", f"prune={run}")
    assert (result.exit_code, result.stdout) == (0, f"{gone}\n"), result.stderr
    assert jw("status", kept).exit_code == 0


# --- visibility: nothing of another owner's jobs through names or prefixes ---------------------------------


def test_another_owners_name_is_not_found_like_an_unknown_name(jw: Jw) -> None:
    name = _name("secret")
    bobs = _start(jw, "--name", name, "--", "sleep", "300", user="bob")
    try:
        for command in (["status"], ["logs"], ["wait"], ["stop"], ["kill"], ["rm"]):
            hidden = jw(*command, name)
            unknown = jw(*command, name + "x")
            assert hidden.exit_code == unknown.exit_code == 4
            assert hidden.stderr == unknown.stderr.replace(name + "x", name)
        assert json.loads(jw("status", "--json", bobs, user="bob").stdout)["state"] == "running"
        # A reader sees every job, names included.
        assert json.loads(jw("status", "--json", name, user="rita").stdout)["id"] == bobs
    finally:
        jw("stop", "--grace", "0s", bobs, user="bob")


def test_a_prefix_of_only_another_owners_job_is_not_found(jw: Jw) -> None:
    bobs = _ended(jw, user="bob")
    prefix = bobs[:-1]
    result = jw("status", prefix)
    assert result.exit_code == 4
    assert result.stderr == f"Error: job {prefix} not found\n"
    assert jw("rm", prefix).exit_code == 4
    assert json.loads(jw("status", "--json", prefix, user="bob").stdout)["id"] == bobs


def _shared_first_character(jw: Jw, user: str) -> tuple[str, list[str]]:
    """A one-character prefix of at least two of `user`'s visible jobs (16 hex digits: 17 jobs suffice)."""
    for _ in range(17):
        ids = jw("list", "-q", user=user).stdout.split()
        by_first: dict[str, list[str]] = {}
        for job_id in ids:
            by_first.setdefault(job_id[0], []).append(job_id)
        for first, matching in by_first.items():
            if len(matching) >= 2:
                return first, matching
        _ended(jw, user=user)
    raise AssertionError("17 jobs and no shared first digit")


def test_an_ambiguous_prefix_lists_candidates(jw: Jw) -> None:
    prefix, matching = _shared_first_character(jw, "alice")
    result = jw("status", prefix)
    assert result.exit_code == 2
    assert f"job id prefix '{prefix}' matches {len(matching)} jobs" in result.stderr
    assert "give more characters of the id" in result.stderr
    assert sum(job_id in result.stderr for job_id in matching) == min(len(matching), 5)
    assert len(result.stderr.splitlines()) == 1


def _common_prefix(a: str, b: str) -> str:
    length = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return a[:length]


def _prefix_of_one_bob_job_and_some_alice_job(jw: Jw) -> tuple[str, str]:
    """A prefix of exactly one of bob's jobs and of one of alice's or more (hers started as needed)."""
    _ended(jw, user="bob")
    for _ in range(40):
        alices = jw("list", "-q", user="alice").stdout.split()
        bobs = jw("list", "-q", user="bob").stdout.split()
        for bob_id in bobs:
            for alice_id in alices:
                prefix = _common_prefix(bob_id, alice_id)
                if prefix and sum(b.startswith(prefix) for b in bobs) == 1:
                    return prefix, bob_id
        _ended(jw)
    raise AssertionError("no prefix shared by one of bob's jobs and one of alice's")


def test_an_ambiguous_prefix_counts_only_visible_jobs(jw: Jw) -> None:
    prefix, bobs = _prefix_of_one_bob_job_and_some_alice_job(jw)
    # The prefix fits alice's jobs too, but bob sees only his own: for him it is unique.
    result = jw("status", "--json", prefix, user="bob")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["id"] == bobs
    ambiguous = jw("status", prefix, user="adam")
    assert ambiguous.exit_code == 2
    assert bobs in ambiguous.stderr


def test_a_name_of_several_owners_is_ambiguous_for_an_admin(jw: Jw) -> None:
    name = _name("shared")
    alices = _ended(jw, "--name", name)
    bobs = _ended(jw, "--name", name, user="bob")
    result = jw("status", name, user="adam")
    assert result.exit_code == 2
    assert f"job name '{name}' is used by 2 owners" in result.stderr
    assert f"{alices} (owner alice)" in result.stderr
    assert f"{bobs} (owner bob)" in result.stderr
    # Each writer's own job wins for that writer, and so would an admin's own.
    assert json.loads(jw("status", "--json", name).stdout)["id"] == alices
    adams = _ended(jw, "--name", name, user="adam")
    assert json.loads(jw("status", "--json", name, user="adam").stdout)["id"] == adams


def test_completion_offers_names(jw: Jw) -> None:
    name = _name("complete")
    _ended(jw, "--name", name)
    result = jw(
        env={"_JW_COMPLETE": "bash_complete", "COMP_WORDS": f"jw status {name[:-2]}", "COMP_CWORD": "2"}
    )
    assert name in [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]


def test_names_and_labels_survive_a_server_restart(jw: Jw, tmp_path: Path) -> None:
    state = tmp_path / "state"
    own = start_server(jw.credentials, state)
    try:
        mine = Jw(jw.runner, jw.credentials, own, jw.config_home)
        job_id = _ended(mine, "--name", "keeper", "-l", "app=db")
    finally:
        own.stop()
    own = start_server(jw.credentials, state)
    try:
        mine = Jw(jw.runner, jw.credentials, own, jw.config_home)
        data = json.loads(mine("status", "--json", "keeper").stdout)
        assert (data["id"], data["name"], data["labels"]) == (job_id, "keeper", {"app": "db"})
        assert mine("list", "-q", "-l", "app=db").stdout.split() == [job_id]
        assert mine("start", "--name", "keeper", "--", "true").exit_code == 6
    finally:
        own.stop()

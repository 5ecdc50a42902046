"""Job names and labels: their rules, name uniqueness per owner, persistence, and resolving a reference.

A reference is a full id, a name or a unique id prefix; jobs the caller may not see never take part.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from jobworker.engine import (
    AmbiguousJobError,
    EngineConfig,
    InvalidSpecError,
    Isolation,
    JobManager,
    JobNotFoundError,
    JobSpec,
    JobState,
    JobStatus,
    NameInUseError,
    StartError,
    records,
    validation,
)
from jobworker.engine.table import JobRow, JobTable

ALICE_ID = "abc11111-1111-4111-8111-111111111111"
BOB_ID = "abc22222-2222-4222-8222-222222222222"
OTHER_ID = "def33333-3333-4333-8333-333333333333"


def _everyone(owner: str) -> bool:
    return True


def _only(who: str) -> Callable[[str], bool]:
    return lambda owner: owner == who


# --- the rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "Z", "0", "web-1", "A.b_c-9", "x" * 128, "abc", "deadbeef"])
def test_valid_names(name: str) -> None:
    validation.check_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "-web",
        ".web",
        "_web",
        "a b",
        "a/b",
        "a:b",
        "x" * 129,
        "é",
        "web\n",
        "a\x00b",
        ALICE_ID,
        ALICE_ID.upper(),
    ],
)
def test_invalid_names_are_refused_naming_the_rule(name: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        validation.check_name(name)
    message = str(info.value)
    assert message.startswith("invalid job name '")
    assert "starting with a letter or digit" in message
    assert "\n" not in message
    assert "\x00" not in message
    assert len(message) < 250


@pytest.mark.parametrize(
    "labels",
    [
        {"app": "web"},
        {"example.com/app": ""},
        {"a.b_c-d": "hello world"},
        {"x" * 63: "v" * 256},
        {"a" * 253 + "/b": "v"},
        {f"k{i}": "v" for i in range(validation.MAX_LABELS)},
    ],
)
def test_valid_labels(labels: dict[str, str]) -> None:
    validation.check_labels(labels)


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        ({"": "v"}, "invalid label key ''"),
        ({"/app": "v"}, "invalid label key '/app'"),
        ({"Example.com/app": "v"}, "invalid label key"),
        ({"a/b/c": "v"}, "invalid label key"),
        ({"-app": "v"}, "invalid label key"),
        ({"app-": "v"}, "invalid label key"),
        ({"a b": "v"}, "invalid label key"),
        ({"x" * 64: "v"}, "invalid label key"),
        ({"a" * 254 + "/b": "v"}, "invalid label key"),
        ({"app": "v" * 257}, "app: the value is longer than 256 characters"),
        ({"app": "a\nb"}, "app: the value must not contain control characters"),
        ({"app": "a\x00b"}, "control characters"),
        ({f"k{i}": "v" for i in range(validation.MAX_LABELS + 1)}, "65 labels, at most 64 allowed"),
    ],
)
def test_invalid_labels_are_refused_naming_the_input(labels: dict[str, str], fragment: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        validation.check_labels(labels)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("ref", ["", "-x", "a b", "x" * 129, "{" + ALICE_ID + "}", "../etc", "é"])
def test_malformed_references_are_invalid(ref: str) -> None:
    with pytest.raises(InvalidSpecError):
        validation.check_job_ref(ref)


# --- resolution, on a table of chosen ids --------------------------------------------------------------


def _row(tmp_path: Path, job_id: str, owner: str, name: str = "") -> JobRow:
    status = JobStatus(
        id=job_id,
        owner=owner,
        command="true",
        args=(),
        cwd="/",
        state=JobState.EXITED,
        pid=0,
        started_at=1.0,
        ended_at=2.0,
        exit_code=0,
        name=name,
    )
    return JobRow(status=status, directory=tmp_path / job_id)


@pytest.fixture
def table(tmp_path: Path) -> JobTable:
    table = JobTable(EngineConfig(state_dir=tmp_path))
    table.add(_row(tmp_path, ALICE_ID, "alice", "web"))
    table.add(_row(tmp_path, BOB_ID, "bob", "web"))
    table.add(_row(tmp_path, OTHER_ID, "bob", "abc"))
    return table


def test_a_full_id_resolves_in_any_case(table: JobTable) -> None:
    assert table.resolve(ALICE_ID, "alice", _only("alice")) == ALICE_ID
    assert table.resolve(ALICE_ID.upper(), "adam", _everyone) == ALICE_ID


def test_a_name_is_the_callers_own_job_first(table: JobTable) -> None:
    assert table.resolve("web", "alice", _only("alice")) == ALICE_ID
    assert table.resolve("web", "bob", _only("bob")) == BOB_ID
    # An admin with a job of that name of its own gets it, never someone else's.
    table.add(_row(table._config.state_dir, "feed0000-0000-4000-8000-000000000000", "adam", "web"))
    assert table.resolve("web", "adam", _everyone) == "feed0000-0000-4000-8000-000000000000"


def test_a_name_several_visible_owners_use_is_ambiguous_listing_their_ids(table: JobTable) -> None:
    with pytest.raises(AmbiguousJobError) as info:
        table.resolve("web", "adam", _everyone)
    message = str(info.value)
    assert f"{ALICE_ID} (owner alice)" in message
    assert f"{BOB_ID} (owner bob)" in message
    assert "use the job id" in message


def test_a_name_used_by_one_other_visible_owner_resolves(table: JobTable) -> None:
    assert table.resolve("abc", "adam", _everyone) == OTHER_ID


def test_another_owners_name_is_not_found_like_an_unknown_one(table: JobTable) -> None:
    table.add(_row(table._config.state_dir, "feed0000-0000-4000-8000-000000000000", "bob", "secret"))
    with pytest.raises(JobNotFoundError) as hidden:
        table.resolve("secret", "alice", _only("alice"))
    with pytest.raises(JobNotFoundError) as unknown:
        table.resolve("nosuch", "alice", _only("alice"))
    assert str(hidden.value) == "job secret not found"
    assert str(unknown.value) == "job nosuch not found"


def test_another_owners_full_id_is_not_found(table: JobTable) -> None:
    with pytest.raises(JobNotFoundError, match=f"^job {BOB_ID} not found$"):
        table.resolve(BOB_ID, "alice", _only("alice"))


def test_a_unique_prefix_resolves_down_to_one_character(table: JobTable) -> None:
    assert table.resolve("d", "bob", _only("bob")) == OTHER_ID
    assert table.resolve("abc2", "adam", _everyone) == BOB_ID
    assert table.resolve("ABC1", "adam", _everyone) == ALICE_ID


def test_ambiguity_counts_only_the_jobs_the_caller_may_see(table: JobTable) -> None:
    # "ab" fits alice's and bob's ids; alice sees only hers, so for her it is unique.
    assert table.resolve("ab", "alice", _only("alice")) == ALICE_ID
    with pytest.raises(AmbiguousJobError) as info:
        table.resolve("ab", "adam", _everyone)
    message = str(info.value)
    assert ALICE_ID in message
    assert BOB_ID in message
    assert OTHER_ID not in message
    assert "give more characters" in message


def test_a_prefix_of_only_other_owners_jobs_is_not_found(table: JobTable) -> None:
    with pytest.raises(JobNotFoundError, match=r"^job def not found$"):
        table.resolve("def", "alice", _only("alice"))


def test_a_name_wins_over_an_id_prefix(table: JobTable) -> None:
    # bob's job named "abc" against the ids that start with "abc" (one of them bob's own).
    assert table.resolve("abc", "bob", _only("bob")) == OTHER_ID


def test_an_ambiguity_error_lists_a_few_candidates_and_counts_the_rest(tmp_path: Path) -> None:
    table = JobTable(EngineConfig(state_dir=tmp_path))
    ids = [f"0000000{i}-0000-4000-8000-000000000000" for i in range(8)]
    for job_id in ids:
        table.add(_row(tmp_path, job_id, "alice"))
    with pytest.raises(AmbiguousJobError) as info:
        table.resolve("0", "alice", _everyone)
    message = str(info.value)
    assert "matches 8 jobs" in message
    assert "and 3 more" in message
    assert sum(job_id in message for job_id in ids) == 5


# --- through the manager: uniqueness, freeing, persistence, filters ---------------------------------------


async def _ended(
    mgr: JobManager, owner: str = "alice", name: str = "", labels: Mapping[str, str] | None = None
) -> JobStatus:
    status = await mgr.start(JobSpec("true", owner=owner, name=name, labels=labels or {}))
    return await mgr.wait(status.id)


async def test_names_are_unique_per_owner_among_stored_jobs(plain_manager: JobManager) -> None:
    first = await _ended(plain_manager, name="build")
    with pytest.raises(NameInUseError) as info:
        await plain_manager.start(JobSpec("true", owner="alice", name="build"))
    assert "'build' already exists" in str(info.value)
    assert first.id in str(info.value)
    # Another owner may use the same name.
    await _ended(plain_manager, owner="bob", name="build")
    # Deleting the job frees its name.
    plain_manager.delete(first.id)
    again = await _ended(plain_manager, name="build")
    assert plain_manager.resolve("build", "alice", _only("alice")) == again.id


async def test_a_refused_start_keeps_no_name(plain_manager: JobManager) -> None:
    with pytest.raises(StartError):
        await plain_manager.start(JobSpec("/nonexistent/cmd", owner="alice", name="svc"))
    await _ended(plain_manager, name="svc")


async def test_invalid_name_or_labels_refuse_the_start(plain_manager: JobManager) -> None:
    with pytest.raises(InvalidSpecError, match="invalid job name '-x'"):
        await plain_manager.start(JobSpec("true", owner="alice", name="-x"))
    with pytest.raises(InvalidSpecError, match="invalid label key 'a b'"):
        await plain_manager.start(JobSpec("true", owner="alice", labels={"a b": "c"}))
    assert plain_manager.list() == []


async def test_concurrent_starts_with_one_name_give_it_to_one_job(plain_manager: JobManager) -> None:
    results = await asyncio.gather(
        *(plain_manager.start(JobSpec("true", owner="alice", name="once")) for _ in range(5)),
        return_exceptions=True,
    )
    started = [r for r in results if isinstance(r, JobStatus)]
    assert len(started) == 1
    assert all(isinstance(r, NameInUseError) for r in results if not isinstance(r, JobStatus))


async def test_retention_frees_the_name(tmp_path: Path) -> None:
    config = EngineConfig(
        state_dir=tmp_path / "state",
        isolation=Isolation.NONE,
        namespaces=False,
        cgroups=False,
        retained_jobs_per_owner=1,
    )
    mgr = JobManager(config)
    await mgr.open()
    try:
        await _ended(mgr, name="nightly")
        await _ended(mgr)  # retention deletes the named job once the newer one has ended
        assert [s.name for s in mgr.list()] == [""]
        await _ended(mgr, name="nightly")
    finally:
        await mgr.close(grace_seconds=0)


async def test_prune_frees_names_and_takes_a_label_selector(plain_manager: JobManager) -> None:
    keep = await _ended(plain_manager, name="keep", labels={"tier": "db"})
    await _ended(plain_manager, name="go", labels={"tier": "web"})
    pruned = plain_manager.prune(float("inf"), owner="alice", labels={"tier": "web"})
    assert [s.name for s in pruned] == ["go"]
    assert plain_manager.status(keep.id).name == "keep"
    await _ended(plain_manager, name="go")
    with pytest.raises(InvalidSpecError, match="invalid label selector key"):
        plain_manager.prune(float("inf"), labels={"bad key": "x"})


async def test_list_filters_by_every_label_and_by_name(plain_manager: JobManager) -> None:
    both = await _ended(plain_manager, labels={"app": "web", "env": "prod"})
    web = await _ended(plain_manager, labels={"app": "web"}, name="w")
    await _ended(plain_manager, owner="bob", labels={"app": "web", "env": "prod"}, name="w")
    assert [s.id for s in plain_manager.list(owner="alice", labels={"app": "web"})] == [both.id, web.id]
    assert [s.id for s in plain_manager.list(labels={"app": "web", "env": "prod"}, owner="alice")] == [
        both.id
    ]
    assert [s.owner for s in plain_manager.list(name="w")] == ["alice", "bob"]
    assert plain_manager.list(labels={"app": "db"}) == []
    with pytest.raises(InvalidSpecError, match="invalid job name"):
        plain_manager.list(name="no such/name")


async def test_names_and_labels_survive_a_restart(tmp_path: Path) -> None:
    def config() -> EngineConfig:
        return EngineConfig(
            state_dir=tmp_path / "state", isolation=Isolation.NONE, namespaces=False, cgroups=False
        )

    mgr = JobManager(config())
    await mgr.open()
    first = await _ended(mgr, name="db", labels={"example.com/tier": "db"})
    await mgr.close(grace_seconds=0)

    again = JobManager(config())
    await again.open()
    try:
        status = again.status(first.id)
        assert (status.name, dict(status.labels)) == ("db", {"example.com/tier": "db"})
        assert again.resolve("db", "alice", _only("alice")) == first.id
        with pytest.raises(NameInUseError):
            await again.start(JobSpec("true", owner="alice", name="db"))
    finally:
        await again.close(grace_seconds=0)


def test_a_record_from_before_names_loads_without_one(tmp_path: Path) -> None:
    directory = tmp_path / ALICE_ID
    directory.mkdir()
    status = _row(tmp_path, ALICE_ID, "alice").status
    records.save(directory, status)
    data = json.loads((directory / records.RECORD).read_text())
    del data["name"], data["labels"]
    (directory / records.RECORD).write_text(json.dumps(data))
    loaded = records.load(directory)
    assert (loaded.name, dict(loaded.labels)) == ("", {})


@pytest.mark.parametrize("bad", [{"name": 5}, {"labels": ["a"]}, {"labels": {"a": 1}}])
def test_a_record_with_malformed_name_or_labels_is_refused(tmp_path: Path, bad: dict[str, object]) -> None:
    directory = tmp_path / ALICE_ID
    directory.mkdir()
    records.save(directory, _row(tmp_path, ALICE_ID, "alice").status)
    data = json.loads((directory / records.RECORD).read_text())
    data.update(bad)
    (directory / records.RECORD).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"name|labels"):
        records.load(directory)


async def test_a_reattached_running_job_keeps_its_name(tmp_path: Path) -> None:
    def config() -> EngineConfig:
        return EngineConfig(
            state_dir=tmp_path / "state", isolation=Isolation.NONE, namespaces=False, cgroups=False
        )

    mgr = JobManager(config())
    await mgr.open()
    running = await mgr.start(JobSpec("sleep", ("300",), owner="alice", name="live", labels={"k": "v"}))
    await mgr.close(grace_seconds=0, stop_jobs=False)

    again = JobManager(config())
    await again.open()
    try:
        assert again.resolve("live", "alice", _only("alice")) == running.id
        status = again.status(running.id)
        assert (status.state, status.name, dict(status.labels)) == (JobState.RUNNING, "live", {"k": "v"})
        with pytest.raises(NameInUseError):
            await again.start(JobSpec("true", owner="alice", name="live"))
        await again.stop(running.id, grace_seconds=0)
    finally:
        await again.close(grace_seconds=0)

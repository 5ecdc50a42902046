"""Tenant fairness: one owner's jobs cannot take the server's capacity or another owner's history."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from jobworker.engine import (
    EngineConfig,
    Isolation,
    JobManager,
    JobNotFoundError,
    JobSpec,
    OwnerUsage,
    QuotaError,
)


@pytest.fixture
async def make_manager(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """make_manager(**EngineConfig overrides) -> an open manager without namespaces or cgroups."""
    managers: list[JobManager] = []

    async def make(**overrides: Any) -> JobManager:
        config = EngineConfig(
            state_dir=tmp_path / f"state{len(managers)}",
            isolation=Isolation.NONE,
            namespaces=False,
            cgroups=False,
            **overrides,
        )
        mgr = JobManager(config)
        await mgr.open()
        managers.append(mgr)
        return mgr

    yield make
    for mgr in managers:
        await mgr.close(grace_seconds=1)


async def _run(mgr: JobManager, owner: str, script: str = "true") -> str:
    status = await mgr.start(JobSpec("sh", ("-c", script), owner=owner))
    await mgr.wait(status.id)
    return status.id


async def test_running_jobs_quota_stops_one_writer_not_the_other(make_manager: Callable[..., Any]) -> None:
    mgr: JobManager = await make_manager(max_running_jobs_per_owner=2, max_running_jobs=10)
    for _ in range(2):
        await mgr.start(JobSpec("sleep", ("100",), owner="alice"))
    with pytest.raises(QuotaError) as info:
        await mgr.start(JobSpec("sleep", ("100",), owner="alice"))
    assert str(info.value) == "quota reached: alice runs 2 jobs, max-jobs-per-owner is 2"
    # The other writer still gets its share.
    bob = await mgr.start(JobSpec("sleep", ("100",), owner="bob"))
    assert mgr.usage_of("alice") == OwnerUsage(running_jobs=2, output_bytes=0, retained_jobs=0)
    assert mgr.usage_of("bob").running_jobs == 1
    # A stopped job frees its slot.
    await mgr.stop(bob.id, grace_seconds=1)
    alice_jobs = mgr.list(owner="alice")
    await mgr.stop(alice_jobs[0].id, grace_seconds=1)
    await mgr.start(JobSpec("sleep", ("100",), owner="alice"))


async def test_per_owner_retention_keeps_each_owners_newest_jobs(make_manager: Callable[..., Any]) -> None:
    mgr: JobManager = await make_manager(retained_jobs_per_owner=2, retained_jobs=10)
    bobs = [await _run(mgr, "bob") for _ in range(2)]
    alices = [await _run(mgr, "alice") for _ in range(5)]
    # Alice's churn deleted only her own oldest jobs; bob's history is intact.
    assert [s.id for s in mgr.list(owner="bob")] == bobs
    assert [s.id for s in mgr.list(owner="alice")] == alices[-2:]
    with pytest.raises(JobNotFoundError):
        mgr.status(alices[0])
    assert mgr.usage_of("alice").retained_jobs == 2


async def test_output_quota_deletes_the_owners_oldest_output_first(make_manager: Callable[..., Any]) -> None:
    mgr: JobManager = await make_manager(max_output_bytes_per_owner=3000)
    bob = await _run(mgr, "bob", "head -c 2000 /dev/zero")
    first = await _run(mgr, "alice", "head -c 2000 /dev/zero")
    second = await _run(mgr, "alice", "head -c 2000 /dev/zero")
    # Her output stays readable until she needs room: at 4000 >= 3000 bytes, her next Start makes it.
    assert mgr.usage_of("alice").output_bytes == 4000
    third = await _run(mgr, "alice")
    assert mgr.usage_of("alice").output_bytes == 2000
    assert [s.id for s in mgr.list(owner="alice")] == [second, third]
    with pytest.raises(JobNotFoundError):
        mgr.status(first)
    assert [s.id for s in mgr.list(owner="bob")] == [bob]


async def test_output_held_by_running_jobs_refuses_a_start(make_manager: Callable[..., Any]) -> None:
    mgr: JobManager = await make_manager(max_output_bytes_per_owner=1000)
    running = await mgr.start(JobSpec("sh", ("-c", "head -c 1500 /dev/zero; exec sleep 100"), owner="alice"))
    # Output arrives asynchronously: wait (bounded) for the follower to see all of it.
    async for _event in mgr.follow(running.id, offset=1499):
        break
    with pytest.raises(QuotaError) as info:
        await mgr.start(JobSpec("true", owner="alice"))
    expected = (
        "quota reached: running jobs of alice store 1500 bytes of output, max-output-per-owner is 1000 bytes"
    )
    assert str(info.value) == expected
    await _run(mgr, "bob")


async def test_quotas_can_be_switched_off(make_manager: Callable[..., Any]) -> None:
    mgr: JobManager = await make_manager(
        max_running_jobs_per_owner=None, max_output_bytes_per_owner=None, retained_jobs_per_owner=None
    )
    ids = [await _run(mgr, "alice", "echo x") for _ in range(3)]
    assert [s.id for s in mgr.list()] == ids


async def test_server_wide_retention_takes_from_the_owner_with_most_jobs(
    make_manager: Callable[..., Any],
) -> None:
    # The reported case: with --retain-jobs 3, three quick jobs of one writer evicted another's history.
    mgr: JobManager = await make_manager(retained_jobs=3)
    bob = await _run(mgr, "bob")
    alices = [await _run(mgr, "alice") for _ in range(3)]
    assert [s.id for s in mgr.list(owner="bob")] == [bob]
    assert [s.id for s in mgr.list(owner="alice")] == alices[-2:]
    assert len(mgr.list()) == 3

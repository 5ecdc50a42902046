"""Fixtures for engine tests: a JobManager on a temp state directory, in each isolation mode available."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobworker.engine import EngineConfig, Isolation, JobManager, JobMount, SandboxConfig

PYTHON = "python3"
IS_ROOT = os.geteuid() == 0


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """A host directory every job can read and write at the same path (a job mount under strict isolation)."""
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(0o777)
    return path


@pytest.fixture(params=["isolated", "plain"])
async def manager(
    request: pytest.FixtureRequest, tmp_path: Path, shared_dir: Path
) -> AsyncIterator[JobManager]:
    """A manager with strict isolation + cgroups (root only) or with neither (any user)."""
    if request.param == "isolated" and not IS_ROOT:
        pytest.skip("namespaces and cgroups need root")
    isolated = request.param == "isolated"
    mgr = JobManager(
        EngineConfig(
            state_dir=tmp_path / "state",
            isolation=Isolation.STRICT if isolated else Isolation.NONE,
            sandbox=SandboxConfig(mounts=(JobMount(str(shared_dir), str(shared_dir), writable=True),)),
            namespaces=isolated,
            cgroups=isolated,
            # Unique per test: open() clears its prefix, which must not hit parallel tests' jobs.
            cgroup_prefix=f"jwtest-{uuid.uuid4().hex[:12]}",
        )
    )
    await mgr.open()
    yield mgr
    await mgr.close(grace_seconds=1)


@pytest.fixture
async def plain_manager(tmp_path: Path) -> AsyncIterator[JobManager]:
    """A manager without namespaces or cgroups: fast and available to any user."""
    mgr = JobManager(
        EngineConfig(state_dir=tmp_path / "state", isolation=Isolation.NONE, namespaces=False, cgroups=False)
    )
    await mgr.open()
    yield mgr
    await mgr.close(grace_seconds=1)

"""Helpers shared by the engine tests (a module of its own: importing from conftest is fragile)."""

from __future__ import annotations

from jobworker.engine import JobManager, OutputChunk, StreamSelection


async def collect(
    mgr: JobManager,
    job_id: str,
    selection: StreamSelection = StreamSelection.BOTH,
    offset: int = 0,
    *,
    follow: bool = True,
) -> list[OutputChunk]:
    """Every chunk a follower of job_id receives."""
    return [
        e async for e in mgr.follow(job_id, selection, offset, follow=follow) if isinstance(e, OutputChunk)
    ]

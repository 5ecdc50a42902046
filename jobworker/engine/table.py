"""The job table: every job of one engine, its records on disk, per-owner usage and quotas, retention."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import re
import shutil
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from jobworker.engine import records, validation
from jobworker.engine.errors import (
    AmbiguousJobError,
    JobNotFoundError,
    JobRunningError,
    NameInUseError,
    QuotaError,
)
from jobworker.engine.job import JobState, JobStatus, OwnerUsage
from jobworker.engine.output import OutputSpool
from jobworker.engine.supervisor import JobSupervisor

if TYPE_CHECKING:
    from jobworker.engine.manager import EngineConfig

log = logging.getLogger("jobworker.engine")

# What can be the start of a job id (a lower-case UUID); a reference of another shape is only a name.
_ID_PREFIX = re.compile(r"[0-9a-f][0-9a-f-]{0,35}")
# Candidates an ambiguity error lists; more are counted, not shown.
_SHOWN_CANDIDATES = 5


@dataclass
class JobRow:
    """One row of the job table: the facts so far plus, while running, its supervisor."""

    status: JobStatus
    directory: Path
    spool: OutputSpool | None = None
    supervisor: JobSupervisor | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # The host uid the job runs as under strict isolation, released when the job has ended.
    uid: int | None = None
    # The latest write of its record; each write waits for the one before, so the newest status wins.
    saving: asyncio.Task[None] | None = None


class JobTable:
    """Every job of one engine: lookup and listing, per-owner usage and quotas, records, retention.

    Reloaded from the state directory at start-up; the engine adds the jobs it starts and calls save()
    whenever a job's status changes. Running counts are derived from the rows, never kept by hand.
    """

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._jobs: dict[str, JobRow] = {}
        # Ended jobs, oldest first: what retention deletes from.
        self._ended_ids: collections.deque[str] = collections.deque()
        # Jobs between the quota check and their row in the table, by id -> owner.
        self._launching: dict[str, str] = {}
        self._deletions: set[asyncio.Future[None]] = set()
        self._saves: set[asyncio.Task[None]] = set()
        # Job directories found without a usable record or spool: retention removes them.
        self._unreadable: list[Path] = []
        # name -> owner -> job id, for stored jobs and those being started (which reserve their name).
        self._names: dict[str, dict[str, str]] = {}

    def __iter__(self) -> Iterator[JobRow]:
        return iter(list(self._jobs.values()))

    def add(self, job: JobRow) -> None:
        """A job that has started."""
        self._jobs[job.status.id] = job
        self._index_name(job.status)

    def check_name(self, owner: str, name: str) -> None:
        """NameInUseError when `owner` already has a stored (or starting) job called `name`."""
        holder = self._names.get(name, {}).get(owner) if name else None
        if holder is not None:
            raise NameInUseError(
                f"a job named '{name}' already exists ({holder}): remove it (jw rm) or choose another name"
            )

    @contextlib.contextmanager
    def launching(self, job_id: str, owner: str, name: str = "") -> Iterator[None]:
        """Count a job against its owner's quota and the server's maximum while it is being started.

        A named job holds its name from here: two concurrent starts with one name cannot both succeed.
        """
        self.check_name(owner, name)
        self._launching[job_id] = owner
        if name:
            self._names.setdefault(name, {})[owner] = job_id
        try:
            yield
        finally:
            del self._launching[job_id]
            if name and job_id not in self._jobs:
                self._unindex_name(name, owner, job_id)

    def _index_name(self, status: JobStatus) -> None:
        if not status.name:
            return
        owners = self._names.setdefault(status.name, {})
        holder = owners.setdefault(status.owner, status.id)
        if holder != status.id:
            # Only records edited by hand get here; the older job keeps the name.
            log.warning(
                "job name already taken, the job is reachable by id only",
                extra={"job_id": status.id, "name": status.name, "holder": holder},
            )

    def _unindex_name(self, name: str, owner: str, job_id: str) -> None:
        owners = self._names.get(name)
        if owners is not None and owners.get(owner) == job_id:
            del owners[owner]
            if not owners:
                del self._names[name]

    def resolve(self, ref: str, caller: str, may_see: Callable[[str], bool]) -> str:
        """The id of the one job `ref` names among those whose owner `may_see`: exact id, name, id prefix.

        In that order: a full id (any case); then a name, the caller's own job first (names are unique
        per owner, but a caller who sees every owner may find several); then a unique id prefix of any
        length. Jobs the caller may not see take no part: they neither match nor make a match ambiguous,
        so a reference to one is JobNotFoundError exactly like a reference to nothing.
        """
        validation.check_job_ref(ref)
        lowered = ref.lower()
        job = self._jobs.get(lowered)
        if job is not None and may_see(job.status.owner):
            return job.status.id
        named = {
            owner: job_id
            for owner, job_id in self._names.get(ref, {}).items()
            if job_id in self._jobs and may_see(owner)
        }
        prefixed = (
            [
                job_id
                for job_id, row in self._jobs.items()
                if job_id.startswith(lowered) and may_see(row.status.owner)
            ]
            if not named and is_id_prefix(ref)
            else []
        )
        return choose_job(ref, caller, named, prefixed)

    def get(self, job_id: str) -> JobRow:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return job

    def snapshot(self, job: JobRow) -> JobStatus:
        """job's status now (usage and output counters are live while it runs)."""
        sup = job.supervisor
        if sup is None:
            return job.status
        live = dataclasses.replace(job.status, pid=sup.pid or job.status.pid, usage=sup.usage())
        return with_output(live, job.spool)

    def statuses(
        self,
        *,
        states: Collection[JobState] | None = None,
        owner: str | None = None,
        name: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> list[JobStatus]:
        """Jobs in start order, optionally only those in states, of owner, called name, with all labels."""
        if name:
            validation.check_name(name)
        if labels:
            validation.check_labels(labels, "label selector")
        out = []
        for job in self._jobs.values():
            if states and job.status.state not in states:
                continue
            if owner is not None and job.status.owner != owner:
                continue
            if name and job.status.name != name:
                continue
            if labels and not _has_labels(job.status, labels):
                continue
            out.append(self.snapshot(job))
        return out

    async def close(self) -> None:
        """Wait for every record write, then for every deletion they led to."""
        # Saves end with retention, which may start deletions: saves first.
        await asyncio.gather(*self._saves)
        await asyncio.gather(*self._deletions)

    async def load(self) -> list[JobRow]:
        """The past jobs in the state directory: ended ones join the table, those whose record says
        RUNNING are returned (the engine reattaches them, or records how they ended)."""
        jobs, self._unreadable = await asyncio.to_thread(self._scan, self._config.state_dir / "jobs")
        running = [job for job in jobs if job.status.state is JobState.RUNNING]
        # In start order, so listings are; the running ones join through add() once reattached.
        for job in sorted(jobs, key=lambda j: j.status.started_at):
            if job.status.state is not JobState.RUNNING:
                job.done.set()
                self._jobs[job.status.id] = job
                self._index_name(job.status)
        ended = sorted(self._jobs.values(), key=lambda j: (j.status.ended_at or 0, j.status.started_at))
        self._ended_ids.extend(j.status.id for j in ended)
        self.apply_retention()
        return running

    def _scan(self, jobs_dir: Path) -> tuple[list[JobRow], list[Path]]:
        """Past jobs from their directories (in a thread); directories that cannot be read come second.

        Nothing found here stops the server from starting: a broken directory is skipped with a warning.
        """
        jobs: list[JobRow] = []
        unreadable: list[Path] = []
        for directory in sorted(jobs_dir.iterdir()):
            try:
                status = records.load(directory)
                spool = OutputSpool(directory / records.SPOOL)
            except (OSError, ValueError, TypeError, KeyError) as e:
                log.warning(
                    "skipping unreadable job directory", extra={"path": str(directory), "error": str(e)}
                )
                unreadable.append(directory)
                continue
            if status.state is not JobState.RUNNING:
                spool.restore(
                    status.stdout_bytes,
                    status.stderr_bytes,
                    status.output_dropped_bytes or 0,
                    status.truncation_reason,
                )
            jobs.append(JobRow(status=status, directory=directory, spool=spool))
        return jobs, unreadable

    def running(self) -> int:
        """Jobs running or being started, counted from the job table (never kept by hand)."""
        return len(self._launching) + sum(1 for job in self._jobs.values() if job.supervisor is not None)

    def usage_of(self, owner: str) -> OwnerUsage:
        """What `owner` holds now: running jobs, stored output bytes, ended jobs kept."""
        running = sum(1 for o in self._launching.values() if o == owner)
        output = retained = 0
        for job in self._jobs.values():
            if job.status.owner != owner:
                continue
            output += stored_bytes(job)
            if job.supervisor is None:
                retained += 1
            else:
                running += 1
        return OwnerUsage(running_jobs=running, output_bytes=output, retained_jobs=retained)

    def check_quota(self, owner: str) -> None:
        """Raise QuotaError when owner may not start another job (its oldest output may make room)."""
        cfg = self._config
        use = self.usage_of(owner)
        jobs_quota = cfg.max_running_jobs_per_owner
        if jobs_quota is not None and use.running_jobs >= jobs_quota:
            raise QuotaError(
                f"quota reached: {owner} runs {use.running_jobs} jobs, max-jobs-per-owner is {jobs_quota}"
            )
        output_quota = cfg.max_output_bytes_per_owner
        if output_quota is not None and use.output_bytes >= output_quota:
            # The owner's own oldest ended jobs make room; what running jobs hold cannot be deleted.
            self._make_room(owner, use.output_bytes, output_quota)
            use = self.usage_of(owner)
        if output_quota is not None and use.output_bytes >= output_quota:
            raise QuotaError(
                f"quota reached: running jobs of {owner} store {use.output_bytes} bytes of output, "
                f"max-output-per-owner is {output_quota} bytes"
            )

    def save(self, job: JobRow, *, ended: bool = False) -> None:
        """Write the job's current status to its record in a thread, after any earlier write of it.

        Once the end record is written (or failed to be) the job counts as ended: waiters wake and
        retention may delete it, never while its record is still being written.
        """
        previous, status = job.saving, job.status

        async def save() -> None:
            if previous is not None:
                await asyncio.wait((previous,))
            try:
                await asyncio.to_thread(records.save, job.directory, status)
            except Exception as e:  # a record that cannot be written must never keep a job from ending
                log.error("cannot save job record", extra={"job_id": status.id, "error": str(e)})
            finally:
                if ended:
                    job.done.set()
                    self._ended_ids.append(status.id)
                    self.apply_retention()

        task = asyncio.create_task(save(), name=f"job-record-{status.id}")
        job.saving = task
        self._saves.add(task)
        task.add_done_callback(self._saves.discard)

    def apply_retention(self) -> None:
        """Delete the oldest ended jobs beyond the configured numbers, records and output alike.

        Per owner first, then server-wide; server-wide, the owner that keeps the most ended jobs gives
        up its oldest, so that one owner's churn does not evict another's history.
        """
        doomed = self._over_owner_retention()
        keep = self._config.retained_jobs
        if keep is not None and len(self._ended_ids) - len(doomed) > keep:
            gone = set(doomed)
            by_owner: dict[str, collections.deque[str]] = {}
            for job_id in self._ended_ids:
                if job_id not in gone:
                    by_owner.setdefault(self._jobs[job_id].status.owner, collections.deque()).append(job_id)
            for _ in range(len(self._ended_ids) - len(doomed) - keep):
                # Ties go to the owner with the oldest job (dict order is order of first appearance).
                owner = max(by_owner, key=lambda o: len(by_owner[o]))
                doomed.append(by_owner[owner].popleft())
        if doomed:
            gone = set(doomed)
            self._ended_ids = collections.deque(i for i in self._ended_ids if i not in gone)
            self._delete(doomed)
        # Directories without a usable record hold no job anyone can read.
        unreadable, self._unreadable = self._unreadable, []
        for directory in unreadable:
            log.warning("removing unreadable job directory", extra={"path": str(directory)})
            self._remove_dir(directory)

    def _over_owner_retention(self) -> list[str]:
        """Ended jobs with more than retained_jobs_per_owner newer ended jobs of the same owner."""
        keep = self._config.retained_jobs_per_owner
        if keep is None:
            return []
        kept: dict[str, int] = {}
        doomed: list[str] = []
        for job_id in reversed(self._ended_ids):
            owner = self._jobs[job_id].status.owner
            kept[owner] = kept.get(owner, 0) + 1
            if kept[owner] > keep:
                doomed.append(job_id)
        return doomed

    def remove(self, job_id: str) -> JobStatus:
        """Delete one ended job, record and output alike; JobRunningError while it runs."""
        job = self.get(job_id)
        # Not ended until its end record is written (done): deleting earlier would race that write.
        if not job.done.is_set():
            raise JobRunningError(f"job {job_id} is still running; stop it first")
        self._ended_ids.remove(job_id)
        self._delete([job_id])
        return job.status

    def ended_before(
        self, cutoff: float, owner: str | None, labels: Mapping[str, str] | None = None
    ) -> list[str]:
        """Ended jobs (of `owner`, or all; with all `labels`) that ended before `cutoff` (epoch seconds)."""
        if labels:
            validation.check_labels(labels, "label selector")
        return [
            job_id
            for job_id in self._ended_ids
            if (owner is None or self._jobs[job_id].status.owner == owner)
            and (self._jobs[job_id].status.ended_at or 0) < cutoff
            and (not labels or _has_labels(self._jobs[job_id].status, labels))
        ]

    def _make_room(self, owner: str, stored: int, quota: int) -> None:
        """Delete `owner`'s oldest ended jobs until the output it stores is under `quota`."""
        doomed: list[str] = []
        for job_id in self._ended_ids:
            if stored < quota:
                break
            job = self._jobs[job_id]
            if job.status.owner == owner and stored_bytes(job) > 0:
                doomed.append(job_id)
                stored -= stored_bytes(job)
        if doomed:
            gone = set(doomed)
            self._ended_ids = collections.deque(i for i in self._ended_ids if i not in gone)
            self._delete(doomed)

    def _delete(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            job = self._jobs.pop(job_id)
            # A deleted job frees its name at once, whatever deleted it (rm, prune, retention, quota).
            self._unindex_name(job.status.name, job.status.owner, job_id)
            # Followers still reading keep their open file; unlinking does not cut them off.
            self._remove_dir(job.directory)

    def _remove_dir(self, directory: Path) -> None:
        deletion = asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, directory, True)
        self._deletions.add(deletion)
        deletion.add_done_callback(self._deletions.discard)


def _has_labels(status: JobStatus, selector: Mapping[str, str]) -> bool:
    return all(status.labels.get(key) == value for key, value in selector.items())


def choose_job(ref: str, caller: str, named: Mapping[str, str], prefixed: Collection[str]) -> str:
    """The one job a name or id prefix `ref` means, given the visible jobs of that name (owner -> id) and
    those whose id starts with it: the caller's own job of that name, else the only one of that name, else
    the only id with that prefix. AmbiguousJobError or JobNotFoundError otherwise.

    The rule the table and the fleet (over every node's job records) both apply."""
    if caller in named:
        return named[caller]
    if len(named) == 1:
        return next(iter(named.values()))
    if named:
        shown = [f"{job_id} (owner {owner})" for owner, job_id in sorted(named.items())]
        raise AmbiguousJobError(
            f"job name '{ref}' is used by {len(named)} owners: {_candidates(shown)}; use the job id"
        )
    if len(prefixed) == 1:
        return next(iter(prefixed))
    if prefixed:
        raise AmbiguousJobError(
            f"job id prefix '{ref}' matches {len(prefixed)} jobs: {_candidates(sorted(prefixed))}; "
            "give more characters of the id"
        )
    raise JobNotFoundError(ref)


def is_id_prefix(ref: str) -> bool:
    """Whether `ref` (any case) could be the beginning of a job id."""
    return _ID_PREFIX.fullmatch(ref.lower()) is not None


def _candidates(shown: list[str]) -> str:
    """At most _SHOWN_CANDIDATES of the candidates of an ambiguous reference, and how many more."""
    more = len(shown) - _SHOWN_CANDIDATES
    return ", ".join(shown[:_SHOWN_CANDIDATES]) + (f" and {more} more" if more > 0 else "")


def stored_bytes(job: JobRow) -> int:
    """Output bytes the job keeps on disk (live from the spool while it runs)."""
    if job.spool is not None:
        return job.spool.stdout_bytes + job.spool.stderr_bytes
    return job.status.stdout_bytes + job.status.stderr_bytes


def with_output(status: JobStatus, spool: OutputSpool | None) -> JobStatus:
    """status with the spool's byte counters and truncation flag."""
    if spool is None:
        return status
    return dataclasses.replace(
        status,
        stdout_bytes=spool.stdout_bytes,
        stderr_bytes=spool.stderr_bytes,
        output_truncated=spool.truncated,
        truncation_reason=spool.truncation_reason,
        output_dropped_bytes=spool.dropped_bytes,
    )

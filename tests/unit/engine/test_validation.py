"""Limits are checked against what the kernel accepts before a cgroup is touched; messages name the range."""

from __future__ import annotations

import os

import pytest

from jobworker.engine import InvalidSpecError, Limits, default_job_limits, default_max_limits
from jobworker.engine.validation import check_limit_settings, effective_limits
from jobworker.units import cpu_list_text

CORES = os.cpu_count() or 1


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limits(pids=1), "pids must be between 2 and 4194304, got 1"),
        (Limits(pids=4_194_305), "pids must be between 2 and 4194304, got 4194305"),
        (Limits(pids=10**12), "pids must be between 2 and 4194304"),
        (
            Limits(cpus=0.001),
            f"cpus must be between 0.01 and {CORES} (the number of CPUs of this host), got 0.001",
        ),
        (Limits(cpus=CORES + 1), f"cpus must be between 0.01 and {CORES} (the number of CPUs of this host)"),
        (Limits(memory_bytes=1), "memory must be between 1 MiB and 2^63-1, got 1"),
        (Limits(memory_bytes=1 << 63), "memory must be between 1 MiB and 2^63-1"),
        (Limits(io_read_bps=1 << 64), "io read bps must be between 1 and 2^63-1"),
        (Limits(memory_bytes=0), "memory must be positive, got 0"),
        (Limits(cpus=float("inf")), "cpus must be a finite number"),
    ],
)
def test_out_of_range_limits_name_the_accepted_range(limits: Limits, message: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        effective_limits(limits, Limits(), Limits())
    assert str(info.value).startswith(message)
    assert "/sys/fs/cgroup" not in str(info.value)


def test_edges_of_the_ranges_are_accepted() -> None:
    low = Limits(cpus=0.01, memory_bytes=1 << 20, io_read_bps=1, io_write_bps=1, pids=2)
    assert effective_limits(low, Limits(), Limits()) == low
    high = Limits(cpus=float(CORES), pids=4_194_304)
    assert effective_limits(high, Limits(), Limits()) == high


def test_defaults_are_checked_like_requests() -> None:
    with pytest.raises(InvalidSpecError, match="pids must be between 2"):
        effective_limits(Limits(), Limits(pids=1), Limits())


def test_ceiling_message_shows_sizes_in_mib() -> None:
    with pytest.raises(InvalidSpecError) as info:
        effective_limits(Limits(memory_bytes=2 << 30), Limits(), Limits(memory_bytes=1 << 30))
    assert str(info.value) == "memory 2048 MiB exceeds the server ceiling of 1024 MiB"


@pytest.mark.parametrize(
    ("defaults", "ceilings", "message"),
    [
        (Limits(pids=1), Limits(), "default limits: pids must be between 2 and 4194304, got 1"),
        (
            Limits(memory_bytes=8 << 30),
            Limits(memory_bytes=4 << 30),
            "default limits: memory 8192 MiB exceeds",
        ),
    ],
)
def test_server_defaults_are_checked_once_at_start(defaults: Limits, ceilings: Limits, message: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        check_limit_settings(defaults, ceilings)
    assert str(info.value).startswith(message)


def test_ceilings_above_the_host_are_allowed() -> None:
    # A ceiling only bounds requests; the kernel range still applies to each one.
    check_limit_settings(Limits(cpus=0.5), Limits(cpus=float(CORES * 8), pids=10**9))


HOST_CPUS = cpu_list_text(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpuset", "message"),
    [
        ("4000", f"cpuset must name only CPUs of this host ({HOST_CPUS}), got 4000"),
        ("0,4000-4001", f"cpuset must name only CPUs of this host ({HOST_CPUS}), got 0,4000-4001"),
        ("1-0", f"cpuset must be a CPU list of this host's CPUs ({HOST_CPUS}): '1-0' is not a CPU list"),
        ("zero", f"cpuset must be a CPU list of this host's CPUs ({HOST_CPUS}): 'zero' is not a CPU list"),
    ],
)
def test_a_bad_cpuset_names_the_rule_and_the_accepted_cpus(cpuset: str, message: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        effective_limits(Limits(cpuset=cpuset), Limits(), Limits())
    assert str(info.value).startswith(message)


def test_a_cpuset_is_kept_in_the_kernels_form() -> None:
    assert effective_limits(Limits(cpuset=" 0,0-0 "), Limits(), Limits()).cpuset == "0"


def test_a_cpuset_beyond_the_ceiling_is_refused() -> None:
    with pytest.raises(InvalidSpecError) as info:
        effective_limits(Limits(cpuset=HOST_CPUS), Limits(), Limits(cpuset="0"))
    if HOST_CPUS != "0":
        assert str(info.value) == f"cpuset {HOST_CPUS} is outside the server ceiling of 0"


def test_the_default_cpuset_ceiling_is_the_hosts_cpus() -> None:
    assert default_max_limits().cpuset == HOST_CPUS
    assert default_job_limits().cpuset is None


def test_memory_swap_is_a_size_and_has_no_default() -> None:
    assert (
        effective_limits(Limits(memory_swap_bytes=1 << 20), Limits(), Limits()).memory_swap_bytes == 1 << 20
    )
    assert default_job_limits().memory_swap_bytes is None
    with pytest.raises(InvalidSpecError, match="memory swap must be positive, got 0"):
        effective_limits(Limits(memory_swap_bytes=0), Limits(), Limits())
    with pytest.raises(InvalidSpecError, match="memory swap 2048 exceeds the server ceiling of 1024"):
        effective_limits(Limits(memory_swap_bytes=2048), Limits(), Limits(memory_swap_bytes=1024))

"""cgroup drivers of the job engine: one interface, v2 / v1 / none implementations, detection.

``detect_driver()`` runs once at start-up and returns a ``CgroupDriver``; ``create()`` gives each
job a ``JobCgroup`` whose ``procs_files`` the spawned process writes "0" into before it execs.
"""

from ._base import CgroupDriver, CgroupError, CgroupStats, JobCgroup
from ._detect import detect_driver
from ._null import NullDriver


def null_driver(reason: str) -> CgroupDriver:
    """The driver that manages no cgroups and refuses limits, explaining why with reason."""
    return NullDriver(reason)


__all__ = [
    "CgroupDriver",
    "CgroupError",
    "CgroupStats",
    "JobCgroup",
    "detect_driver",
    "null_driver",
]

"""The job sandbox, host side: policy, per-job uids, the seccomp program, and the shim flags of one job.

Strict isolation (the default) runs every command as an unprivileged host uid with empty capability sets,
no_new_privs and a seccomp filter, in its own PID / mount / network / UTS / IPC namespaces, with a root of
its own: the host's ``/`` read-only (nosuid, nodev), fresh ``/proc``, a minimal ``/dev``, ``/sys`` without
cgroupfs, empty ``/run``, private ``/tmp`` and working directory ``/job`` (tmpfs, size-capped, charged to
the job's memory cgroup), operator-chosen binds, and the server's secrets masked. The steps themselves run
inside the shim (``_confine.py``); this module decides what they are.

No user namespace: the command's uid *is* a host uid (never 0), so the host's file permissions apply to
it unchanged, and its helpers (init, the launcher) stay host root, out of its reach.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import enum
import errno
import functools
import hashlib
import os
import pwd
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobworker.engine.errors import CapacityError

# Job uids are allocated from here unless the operator configures a range or one user. Far above the
# ranges distributions, systemd's DynamicUser (61184-65519) and subuid tools (100000+) hand out.
DEFAULT_UID_RANGE = range(1_200_000_000, 1_200_065_536)
# The per-job working directory (tmpfs): the default cwd and $HOME of a job.
JOB_WORKDIR = "/job"
DEFAULT_SCRATCH_BYTES = 512 << 20

# Denied with EPERM: at least what Docker's default profile denies to a container without capabilities.
DENIED_SYSCALLS = (
    # kernel modules, kexec, reboot, swap, accounting, quotas
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "query_module",
    "get_kernel_syms",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "nfsservctl",
    "lookup_dcookie",
    "syslog",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "vhangup",
    # eBPF, perf, userfaultfd, io_uring (a large attack surface Docker also refuses)
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    # kernel keyrings
    "add_key",
    "request_key",
    "keyctl",
    # namespaces and mounts
    "unshare",
    "setns",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    # clocks
    "settimeofday",
    "stime",
    "clock_settime",
    "clock_settime64",
    "clock_adjtime",
    "clock_adjtime64",
    # file handles bypass path permissions; raw IO ports; NUMA policy; cross-process inspection
    "open_by_handle_at",
    "name_to_handle_at",
    "iopl",
    "ioperm",
    "mbind",
    "set_mempolicy",
    "move_pages",
    "get_mempolicy",
    "kcmp",
    "vm86",
    "vm86old",
    "fanotify_init",
    "sethostname",
    "setdomainname",
    # unimplemented or reserved entry points Docker's allowlist leaves out as well
    "afs_syscall",
    "tuxcall",
    "security",
    "getpmsg",
    "putpmsg",
    "vserver",
)
# clone() with any of these flags would create a namespace: refused like unshare().
_CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)
# Device rules of the v1 devices cgroup: exactly the nodes of the job's /dev, plus its devpts.
DEVICE_RULES = (
    "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm",
)  # fmt: skip

_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_KILL_PROCESS = 0x80000000
_SCMP_FLTATR_ACT_BADARCH = 2
_SCMP_CMP_EQ = 4
_SCMP_CMP_MASKED_EQ = 7
# AF_VSOCK reaches the hypervisor's host whatever the job's network namespace: no job needs it.
_AF_VSOCK = 40


def _scmp_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class Isolation(enum.Enum):
    """How jobs are confined: ``strict`` (the sandbox) or ``none`` (server privileges, trusted hosts)."""

    STRICT = "strict"
    NONE = "none"


class SandboxUnavailableError(Exception):
    """The host cannot provide strict isolation; the message says what is missing in one line."""


@dataclass(frozen=True)
class JobMount:
    """A host path exposed to every job (``--job-mount HOST:PATH[:ro|rw]``)."""

    source: str
    target: str
    writable: bool = False

    @classmethod
    def parse(cls, text: str) -> JobMount:
        """Parse HOST:PATH[:ro|rw]; raise ValueError with a readable message."""
        parts = text.split(":")
        mode = "ro"
        if len(parts) == 3:
            mode = parts.pop()
        if len(parts) != 2 or mode not in ("ro", "rw"):
            raise ValueError(f"job mount {text!r} is not HOST:PATH[:ro|rw]")
        source, target = parts
        for path in (source, target):
            if not os.path.isabs(path) or "\0" in path:
                raise ValueError(f"job mount {text!r}: both paths must be absolute")
        target = os.path.normpath(target)
        if target == "/" or target.split("/")[1] in ("proc", "sys", "dev"):
            raise ValueError(f"job mount {text!r}: cannot replace {target}")
        return cls(os.path.realpath(source), target, mode == "rw")

    def check(self) -> None:
        """Raise SandboxUnavailableError when the source is not there."""
        if not os.path.exists(self.source):
            raise SandboxUnavailableError(f"job mount source {self.source} does not exist")


@dataclass(frozen=True)
class SandboxConfig:
    """What strict isolation does; the defaults suit a shared host."""

    uid_range: range = DEFAULT_UID_RANGE
    # An operator-chosen host user ("name", "uid" or "uid:gid") for every job instead of one uid per job.
    job_user: str | None = None
    mounts: tuple[JobMount, ...] = ()
    # Host paths hidden from jobs whatever their permissions (the server adds its credentials).
    masked: tuple[str, ...] = ()
    scratch_bytes: int = DEFAULT_SCRATCH_BYTES


def resolve_user(spec: str) -> tuple[int, int]:
    """uid and gid of "name", "uid" or "uid:gid"; refuse root."""
    name, _, group = spec.partition(":")
    if name.isdigit():
        uid = int(name)
        gid = int(group) if group.isdigit() else uid
    else:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise SandboxUnavailableError(f"job user {name!r} does not exist") from None
        uid, gid = entry.pw_uid, int(group) if group.isdigit() else entry.pw_gid
    if uid == 0 or gid == 0:
        raise SandboxUnavailableError("the job user must not be root")
    return uid, gid


class UidPool:
    """Per-job host uids: the least recently released one first, so a uid is rarely reused quickly."""

    def __init__(self, uids: Iterable[int]) -> None:
        self._free: collections.deque[int] = collections.deque(uids)
        self._size = len(self._free)

    def allocate(self) -> int:
        """A free uid; CapacityError when every uid of the range runs a job."""
        if not self._free:
            raise CapacityError(f"all {self._size} job uids are in use")
        return self._free.popleft()

    def release(self, uid: int) -> None:
        """Return uid once the job's processes are gone."""
        self._free.append(uid)

    def claim(self, uid: int) -> None:
        """Take uid out of the free ones: a job reattached after a restart runs as it."""
        with contextlib.suppress(ValueError):
            self._free.remove(uid)


def check_uid_range(uids: range) -> None:
    """Refuse a range that holds root or uids the host already has users for."""
    if uids.start <= 0 or len(uids) == 0:
        raise SandboxUnavailableError("the job uid range must be non-empty and exclude root")
    taken = [e.pw_name for e in pwd.getpwall() if e.pw_uid in uids]
    if taken:
        raise SandboxUnavailableError(f"the job uid range holds existing users: {', '.join(taken[:3])}")


def compile_seccomp() -> bytes:
    """The job's seccomp filter as BPF (struct sock_filter[]), built with libseccomp."""
    lib = _libseccomp()
    ctx = lib.seccomp_init(ctypes.c_uint32(_SCMP_ACT_ALLOW))
    if not ctx:
        raise SandboxUnavailableError("libseccomp could not create a filter")
    try:
        _rule_attr(lib, ctx)
        eperm = ctypes.c_uint32(_scmp_errno(errno.EPERM))
        for name in DENIED_SYSCALLS:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr >= 0 and lib.seccomp_rule_add_array(ctx, eperm, nr, 0, None) != 0:
                raise SandboxUnavailableError(f"libseccomp refused a rule for {name}")
        clone = lib.seccomp_syscall_resolve_name(b"clone")
        for flag in _CLONE_NAMESPACE_FLAGS:
            cmp = _ArgCmp(0, _SCMP_CMP_MASKED_EQ, flag, flag)
            if lib.seccomp_rule_add_array(ctx, eperm, clone, 1, ctypes.byref(cmp)) != 0:
                raise SandboxUnavailableError("libseccomp refused the clone rule")
        socket = lib.seccomp_syscall_resolve_name(b"socket")
        vsock = _ArgCmp(0, _SCMP_CMP_EQ, _AF_VSOCK, 0)
        if socket >= 0 and lib.seccomp_rule_add_array(ctx, eperm, socket, 1, ctypes.byref(vsock)) != 0:
            raise SandboxUnavailableError("libseccomp refused the socket rule")
        # clone3 passes its flags in memory a filter cannot read: ENOSYS makes the C library fall back to
        # clone(), which the rules above check (Docker does the same).
        clone3 = lib.seccomp_syscall_resolve_name(b"clone3")
        if clone3 >= 0:
            lib.seccomp_rule_add_array(ctx, ctypes.c_uint32(_scmp_errno(errno.ENOSYS)), clone3, 0, None)
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise SandboxUnavailableError("libseccomp is not installed (Debian: libseccomp2)") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p,
    ]  # fmt: skip
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _rule_attr(lib: ctypes.CDLL, ctx: int) -> None:
    # A syscall of another ABI (32-bit, x32) would dodge rules written for native numbers: kill instead.
    if lib.seccomp_attr_set(ctx, _SCMP_FLTATR_ACT_BADARCH, ctypes.c_uint32(_SCMP_ACT_KILL_PROCESS)) != 0:
        raise SandboxUnavailableError("libseccomp refused the bad-architecture action")


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    read_fd, write_fd = os.pipe()
    try:
        rc = lib.seccomp_export_bpf(ctx, write_fd)
        os.close(write_fd)
        write_fd = -1
        if rc != 0:
            raise SandboxUnavailableError("libseccomp could not export the filter")
        chunks = []
        while chunk := os.read(read_fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


class Sandbox:
    """Strict isolation of one engine: the uid pool, the compiled filter, the shim flags per job."""

    def __init__(self, config: SandboxConfig, state_dir: Path, extra_masks: Sequence[str] = ()) -> None:
        self._config = config
        self._stage = state_dir / "sandbox"
        # Where the fork server keeps its prepared host view: outside every tree bound into a job (/run is
        # never bound), or nothing (each job then builds its root in full).
        self._template: Path | None = (
            Path("/run/jobworker") / hashlib.sha256(bytes(state_dir)).hexdigest()[:16]
        )
        self._seccomp = state_dir / "seccomp.bpf"
        self._masks = tuple(dict.fromkeys(os.path.realpath(p) for p in (*config.masked, *extra_masks)))
        self._fixed: tuple[int, int] | None = None
        self._pool: UidPool | None = None

    def prepare(self) -> None:
        """Check the host can provide strict isolation and write what jobs need; raise with one line."""
        if os.geteuid() != 0:
            raise SandboxUnavailableError("strict isolation needs root (or run with --isolation none)")
        if self._config.job_user is not None:
            self._fixed = resolve_user(self._config.job_user)
        else:
            check_uid_range(self._config.uid_range)
            self._pool = UidPool(self._config.uid_range)
        for mount in self._config.mounts:
            mount.check()
        program = compile_seccomp()
        self._stage.mkdir(mode=0o700, exist_ok=True)
        if self._template is not None:
            try:
                self._template.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError:
                self._template = None
        # Rewritten only when it changed: a server must still start on a state disk that is full.
        try:
            unchanged = self._seccomp.read_bytes() == program
        except OSError:
            unchanged = False
        if not unchanged:
            tmp = self._seccomp.with_suffix(".tmp")
            tmp.write_bytes(program)
            tmp.replace(self._seccomp)

    @property
    def template(self) -> Path | None:
        """Where the fork server prepares the shared host view (a directory on the host's /run)."""
        return self._template

    def close(self) -> None:
        """Remove the (empty, on the host) directory of the prepared view, once no fork server uses it."""
        if self._template is not None:
            with contextlib.suppress(OSError):
                self._template.rmdir()

    @property
    def description(self) -> str:
        """One line for logs and GetServerInfo."""
        if self._fixed is not None:
            who = f"as uid {self._fixed[0]}"
        else:
            r = self._config.uid_range
            who = f"as one uid per job from {r.start}-{r.stop - 1}"
        return (
            f"jobs run {who}, no capabilities, no_new_privs, seccomp; read-only host root, "
            f"private /tmp, {JOB_WORKDIR}, /proc, /dev/pts, /dev/shm; no cgroupfs; "
            "server credentials and state masked"
        )

    def acquire_uid(self) -> tuple[int, int]:
        """The uid and gid of a new job (release with release_uid when it has ended)."""
        if self._fixed is not None:
            return self._fixed
        assert self._pool is not None, "prepare() first"
        uid = self._pool.allocate()
        return uid, uid

    def release_uid(self, uid: int) -> None:
        if self._pool is not None:
            self._pool.release(uid)

    def claim_uid(self, uid: int) -> None:
        """Mark uid in use by a job started by an earlier server run (see UidPool.claim)."""
        if self._pool is not None:
            self._pool.claim(uid)

    def shim_args(self, uid: int, gid: int) -> tuple[str, ...]:
        """The shim flags that confine one job."""
        return ("--uid", str(uid), "--gid", str(gid), *self._common_args)

    @functools.cached_property
    def _common_args(self) -> tuple[str, ...]:
        # The same for every job; built on first use, after prepare() settled the template.
        args = [
            "--sandbox", str(self._stage),
            "--scratch-bytes", str(self._config.scratch_bytes),
            "--workdir", JOB_WORKDIR,
            "--seccomp", str(self._seccomp),
        ]  # fmt: skip
        if self._template is not None:
            args += ["--template", str(self._template)]
        for mount in self._config.mounts:
            args += ["--bind", f"{mount.source}:{mount.target}:{'rw' if mount.writable else 'ro'}"]
        for path in self._masks:
            args += ["--mask", path]
        return tuple(args)

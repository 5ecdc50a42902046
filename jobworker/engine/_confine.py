"""The job sandbox, as one ordered sequence of steps run by the shim (standard library only).

The order follows bubblewrap's: build the job's root in the new mount namespace, pivot into it and detach
the host's tree, then, in the command's own process and as late as possible, drop to the job's host uid,
empty every capability set, set no_new_privs and load the seccomp filter right before ``execve``.

Two processes take part:

- **init** (PID 1 of the job's PID namespace) stays host root: it builds the root (``build_root``) and
  supervises. Running as a different uid than the command is what keeps it out of the command's reach:
  ``kill``, ``ptrace`` and ``/proc/1/{mem,fd,environ}`` all need the same uid or a capability.
- **the command** calls ``drop_privileges`` and ``load_seccomp`` between fork and exec.

Imported by ``_shim.py`` from the same directory; see ``jobworker.engine.sandbox`` for the host side (uid
pool, seccomp compilation, the plan this module executes).
"""

import ctypes
import os
import struct

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# Syscall numbers of calls the C library does not wrap (same on x86_64 and aarch64 for the new ones).
_SYS = {
    "x86_64": {"pivot_root": 155, "capset": 126, "mount_setattr": 442},
    "aarch64": {"pivot_root": 41, "capset": 91, "mount_setattr": 442},
}

# Host paths never bound into the job's root: each gets a fresh mount of its own instead.
FRESH = ("proc", "sys", "dev", "tmp", "run")
# Device nodes of the job's /dev: (name, major, minor). The v1 devices cgroup allows exactly these.
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
# Readable by anyone in a fresh procfs and useless to a job (Docker masks the same).
PROC_MASKED = ("kcore", "keys", "timer_list", "sched_debug", "sysrq-trigger")


class SandboxError(Exception):
    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


class Plan:
    """What build_root and drop_privileges do for one job (parsed from shim flags)."""

    def __init__(self) -> None:
        self.stage = ""
        self.uid = -1
        self.gid = -1
        self.scratch_bytes = 0
        self.workdir = ""
        # (host source, path in the job, writable)
        self.binds: list[tuple[str, str, bool]] = []
        self.masks: list[str] = []
        self.seccomp = b""


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _sys(name: str) -> int:
    machine = os.uname().machine
    try:
        return _SYS[machine][name]
    except KeyError:
        raise SandboxError(0, f"the job sandbox does not support {machine}") from None


def _prctl(option: int, arg2: int | bytes = 0) -> int:
    # prctl and syscall are variadic: every argument is passed as a full register-sized value.
    arg = arg2 if isinstance(arg2, bytes) else ctypes.c_ulong(arg2)
    return int(
        _libc().prctl(ctypes.c_int(option), arg, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    )


def _syscall(name: str, *args: int | bytes) -> int:
    wrapped = [a if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    return int(_libc().syscall(ctypes.c_long(_sys(name)), *wrapped))


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise SandboxError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    c = _libc()
    rc = c.mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check(rc, f"mounting {target}")


def _setattr(path: str, attrs: int, *, recursive: bool) -> None:
    """mount_setattr(2): flags for a whole tree in one call (Linux 5.12+)."""
    attr = struct.pack("QQQQ", attrs, 0, 0, 0)
    rc = _syscall("mount_setattr", -100, path.encode(), AT_RECURSIVE if recursive else 0, attr, len(attr))
    _check(rc, f"making {path} read-only (needs Linux 5.12 or later)")


def _tmpfs(target: str, options: str, flags: int = MS_NOSUID | MS_NODEV) -> None:
    _mount("tmpfs", target, "tmpfs", flags, options)


def _bind_entry(host: str, new: str, name: str) -> None:
    """Mirror one top-level entry of the host's root into new (read-only comes later, for all)."""
    src, dst = f"{host}/{name}", f"{new}/{name}"
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    if os.path.isdir(src):
        os.mkdir(dst, 0o755)
        _mount(src, dst, None, MS_BIND | MS_REC)
    elif os.path.isfile(src):
        os.close(os.open(dst, os.O_CREAT | os.O_WRONLY, 0o644))
        _mount(src, dst, None, MS_BIND)


def _make_dev(new: str) -> None:
    """The device nodes every job shares: a read-only tmpfs (a job can open them, never add one)."""
    _tmpfs(new + "/dev", "mode=0755,size=64k", MS_NOSUID | MS_NOEXEC)
    for name, major, minor in DEVICES:
        path = f"{new}/dev/{name}"
        os.mknod(path, 0o666 | 0o020000, os.makedev(major, minor))
        os.chmod(path, 0o666)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ):
        os.symlink(target, f"{new}/dev/{name}")
    os.mkdir(new + "/dev/pts", 0o755)
    os.mkdir(new + "/dev/shm", 0o755)
    _mount(None, new + "/dev", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")


def _own_dev(new: str) -> None:
    """What of /dev is a job's own: its terminals (a new devpts instance) and its shared memory."""
    _mount("devpts", new + "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    _tmpfs(new + "/dev/shm", "mode=1777,size=64m")


def _make_proc(host: str, new: str) -> None:
    proc = new + "/proc"
    _mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount(proc + "/sys", proc + "/sys", None, MS_BIND | MS_REC)
    _setattr(proc + "/sys", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, recursive=True)
    for name in PROC_MASKED:
        if os.path.exists(f"{proc}/{name}"):
            _mask_file(host, f"{proc}/{name}")


def _mask_file(host: str, target: str) -> None:
    # /dev/null on a read-only, nodev mount: the path stays, opening it fails (EACCES), nothing is read.
    _mount(host + "/dev/null", target, None, MS_BIND)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _mask(host: str, new: str, path: str) -> None:
    """Cover a host path so nothing of it shows, whatever its permissions (a no-op if not in the view)."""
    target = new + path
    if not os.path.lexists(target) or os.path.islink(target):
        return
    if os.path.isdir(target):
        _tmpfs(target, "mode=0000,size=4k", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    else:
        _mask_file(host, target)


def _private_mounts() -> None:
    rc = _libc().mount(None, b"/", None, ctypes.c_ulong(MS_REC | (1 << 18)), None)
    _check(rc, "making mounts private")


def _host_view(plan: Plan, host: str, new: str) -> None:
    """The part of a job's root that is the same for every job: the host's entries read-only, sysfs, masks.

    host is where the host's tree is reached ("" or "/oldroot"), new the job root being built (a tmpfs).
    """
    top_targets = {target.strip("/").split("/")[0] for _src, target, _w in plan.binds}
    skip = set(FRESH) | {plan.workdir.strip("/")}
    for name in sorted(os.listdir(host or "/")):
        if name not in skip:
            _bind_entry(host, new, name)
    for name in (*FRESH, plan.workdir.strip("/"), *top_targets):
        if not os.path.lexists(f"{new}/{name}"):
            os.mkdir(f"{new}/{name}", 0o755)
    # One call makes every host mount read-only, setuid-less and device-less; mounts made after it are the
    # job's own and get their flags explicitly.
    _setattr(new, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, recursive=True)
    # sysfs without the mounts below it: no cgroupfs, nothing writable.
    _mount(host + "/sys", new + "/sys", None, MS_BIND)
    _mount(None, new + "/sys", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _make_dev(new)
    # Empty and read-only: no host socket, nothing for a job to write.
    _tmpfs(new + "/run", "mode=0755,size=4k", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for path in plan.masks:
        _mask(host, new, path)


def _job_mounts(plan: Plan, host: str, new: str) -> None:
    """The part of a job's root that is its own: /proc, /dev/pts and /dev/shm, /tmp, its workdir, the job
    mounts."""
    _make_proc(host, new)
    _own_dev(new)
    _tmpfs(new + "/tmp", f"mode=1777,size={plan.scratch_bytes}")
    _tmpfs(new + plan.workdir, f"mode=0700,uid={plan.uid},gid={plan.gid},size={plan.scratch_bytes}")
    for source, target, writable in plan.binds:
        # A target below the job's own tmpfs mounts (/tmp/x, /job/x) is made here; below the read-only
        # host view it must exist already (EROFS says so at the start-up probe).
        if not os.path.lexists(new + target):
            if os.path.isdir(host + source):
                os.makedirs(new + target, 0o755)
            else:
                os.makedirs(os.path.dirname(new + target), 0o755, exist_ok=True)
                os.close(os.open(new + target, os.O_CREAT | os.O_WRONLY, 0o644))
        _mount(host + source, new + target, None, MS_BIND | MS_REC)
        ro = 0 if writable else MOUNT_ATTR_RDONLY
        _setattr(new + target, ro | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, recursive=True)


def _enter(new: str) -> None:
    """pivot_root into new and detach everything else: nothing of the host lies beneath the job's mounts."""
    os.chdir(new)
    _check(_syscall("pivot_root", b".", b"."), "entering the job's root")
    _check(_libc().umount2(b".", MNT_DETACH), "detaching the host's root")
    os.chdir("/")


def build_template(plan: Plan, path: str) -> None:
    """In the fork server, once: a mount namespace of its own holding the host view at path (a directory
    outside every bound tree), so each job's mount namespace starts as a copy of it."""
    _check(_libc().unshare(0x00020000), "creating the fork server's mount namespace")
    _private_mounts()
    _tmpfs(path, "mode=0755,size=64k")
    _host_view(plan, "", path)


def enter_template(plan: Plan, path: str) -> None:
    """In a job's init, inside its copy of the fork server's mount namespace: add its own mounts, pivot."""
    _job_mounts(plan, "", path)
    _enter(path)


def build_root(plan: Plan) -> None:
    """Build the job's root from scratch and pivot into it (a launcher without the fork server's template).

    The host's tree is reached through /oldroot while building, so a bind source can never be hidden by a
    mount made for the job (bubblewrap does the same).
    """
    _private_mounts()
    _tmpfs(plan.stage, "mode=0700,size=64k")
    os.mkdir(plan.stage + "/oldroot", 0o700)
    os.mkdir(plan.stage + "/newroot", 0o755)
    _check(_syscall("pivot_root", plan.stage.encode(), (plan.stage + "/oldroot").encode()), "pivoting root")
    os.chdir("/")
    _tmpfs("/newroot", "mode=0755,size=64k")
    _host_view(plan, "/oldroot", "/newroot")
    _job_mounts(plan, "/oldroot", "/newroot")
    _enter("/newroot")


_BOUNDING_EMPTY = False


def empty_bounding_set() -> None:
    """Drop every capability from this process's bounding set (its children inherit it).

    The bounding set only limits what an execve can gain; this process keeps its effective capabilities.
    The fork server does this once under strict isolation, so each job's command need not.
    """
    global _BOUNDING_EMPTY
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        _check(_prctl(PR_CAPBSET_DROP, cap), "dropping the capability bounding set")
    _BOUNDING_EMPTY = True


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid:gid with no supplementary groups and every capability set empty, no_new_privs on."""
    if not _BOUNDING_EMPTY:
        empty_bounding_set()
    _check(_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL), "clearing ambient capabilities")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    # setresuid away from 0 clears permitted and effective, not inheritable: clear all three explicitly.
    header = struct.pack("II", _LINUX_CAPABILITY_VERSION_3, 0)
    data = bytes(24)
    _check(_syscall("capset", header, data), "clearing capabilities")
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "setting no_new_privs")


def load_seccomp(program: bytes) -> None:
    """Install a compiled BPF filter (struct sock_filter[]); needs no_new_privs first."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HxxxxxxP", len(program) // 8, ctypes.addressof(buf))
    # prctl(PR_SET_SECCOMP, mode, prog): the mode is arg2 and the program arg3.
    rc = _libc().prctl(
        ctypes.c_int(PR_SET_SECCOMP),
        ctypes.c_ulong(SECCOMP_MODE_FILTER),
        fprog,
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    _check(int(rc), "loading the seccomp filter")

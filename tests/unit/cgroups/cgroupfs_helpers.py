"""Test helpers: a fake cgroup v2 fs and sysfs on tmp_path that mirror the kernel; host probes.

FakeKernel replaces the driver's Host: mkdir populates interface files from the parent's
subtree_control, writes are validated as the kernel does (no internal processes, controllers must be
available, files are never created), cgroup.kill and SIGKILL make processes disappear, rmdir refuses
populated cgroups. Time is virtual so bounded waits finish at once.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jobworker.engine.cgroups import CgroupDriver, detect_driver
from jobworker.engine.cgroups._host import Host

SERVER_PID = 57
# Device numbers of the fake disks; the tmp filesystem must not collide with them (see fake_sysfs).
FAKE_DEVICES = ("8:0", "8:1", "8:2", "259:0", "259:1", "259:5", "253:0", "7:0", "252:0", "11:0")


@dataclass
class FakeV2Host:
    """A fake host: cgroup2 mounted at mount, the server's /proc/self/cgroup and mountinfo, sysfs."""

    tmp: Path
    mount: Path
    kernel: FakeKernel
    sysfs: FakeSysfs
    proc_self_cgroup: Path
    mountinfo: Path

    def detect(self, prefix: str = "jobworker") -> CgroupDriver:
        """detect_driver() against this fake host."""
        return detect_driver(
            root=str(self.mount),
            proc_self_cgroup=str(self.proc_self_cgroup),
            mountinfo=str(self.mountinfo),
            sys_block=str(self.sysfs.block),
            prefix=prefix,
            io_paths=(str(self.tmp),),
            host=self.kernel,
        )


ALL_CONTROLLERS = ("cpu", "io", "memory", "pids", "cpuset")
ALL_FEATURES = frozenset({"cgroup.kill", "cgroup.freeze", "memory.swap.max", "memory.peak"})

_CONTROLLER_FILES = {
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n"},
    "io": {"io.max": "", "io.stat": ""},
    "memory": {
        "memory.max": "max\n",
        "memory.current": "0\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        "memory.swap.max": "max\n",
        "memory.peak": "0\n",
    },
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
    # Empty means "the parent's" on v2 (cpuset.cpus.effective says which).
    "cpuset": {"cpuset.cpus": "\n", "cpuset.mems": "\n", "cpuset.cpus.effective": "0-1\n"},
}


def _os_error(code: int, path: Path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


class FakeKernel(Host):
    """A Host whose cgroupfs is a plain directory tree that behaves like cgroup v2."""

    def __init__(self, mount: Path, *, self_pid: int, features: frozenset[str]) -> None:
        self.mount = mount
        self.self_pid = self_pid
        self.features = features
        self.signals: list[tuple[int, int]] = []
        self.writes: list[tuple[str, str]] = []
        # Interface file name -> errno its next writes fail with (a kernel refusing the value).
        self.fail: dict[str, int] = {}
        self.clock = 0.0

    # --- building the tree -------------------------------------------------------------------
    def make_root(self, controllers: tuple[str, ...], procs: list[int], *, host_root: bool) -> None:
        """Populate the mount's top cgroup; host_root omits cgroup.type like the real root."""
        self.mount.mkdir(parents=True, exist_ok=True)
        self._files(self.mount, controllers)
        if host_root:
            (self.mount / "cgroup.type").unlink()
        self.set_procs(self.mount, procs)

    def make_cgroup(self, path: Path, procs: list[int] | None = None) -> None:
        """Create a cgroup as if another program had made it (parents included)."""
        if not path.parent.exists():
            self.make_cgroup(path.parent)
        if not path.exists():
            self.mkdir(str(path))
        if procs:
            self.set_procs(path, procs)

    def set_procs(self, path: Path, pids: list[int]) -> None:
        """Put pids into the cgroup at path directly."""
        (path / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
        self._refresh_events()

    def procs(self, path: Path) -> list[int]:
        """The pids in the cgroup at path."""
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]

    # --- Host --------------------------------------------------------------------------------
    def mkdir(self, path: str) -> None:
        p = Path(path)
        p.mkdir()
        controllers = tuple((p.parent / "cgroup.subtree_control").read_text().split())
        self._files(p, controllers)

    def rmdir(self, path: str) -> None:
        p = Path(path)
        if not p.is_dir():
            raise _os_error(errno.ENOENT, p)
        if any(c.is_dir() for c in p.iterdir()) or self.procs(p):
            raise _os_error(errno.EBUSY, p)
        for child in p.iterdir():
            child.unlink()
        p.rmdir()

    def own_pid(self) -> int:
        return self.self_pid

    def write(self, path: str, value: str) -> None:
        p = Path(path)
        self.writes.append((str(p.relative_to(self.mount)), value))
        if p.name in self.fail:
            raise _os_error(self.fail[p.name], p)
        if not p.is_file():
            raise _os_error(errno.ENOENT, p)
        cgroup = p.parent
        if p.name == "cgroup.procs":
            self._move(cgroup, self.self_pid if value.strip() == "0" else int(value))
        elif p.name == "cgroup.subtree_control":
            self._subtree_control(cgroup, value)
        elif p.name == "cgroup.kill":
            for directory in [cgroup, *(d for d in cgroup.rglob("*") if d.is_dir())]:
                for pid in self.procs(directory):
                    self.signals.append((pid, signal.SIGKILL))
                (directory / "cgroup.procs").write_text("")
            self._refresh_events()
        elif p.name == "cgroup.freeze":
            self._set_event(cgroup, "frozen", value.strip())
            p.write_text(value)
        elif p.name == "io.max":
            # Like the kernel: a line updates only the keys it names for its device.
            lines = {ln.split()[0]: ln.split()[1:] for ln in p.read_text().splitlines() if ln}
            device, *keys = value.split()
            merged = dict(k.split("=", 1) for k in lines.get(device, []))
            merged.update(k.split("=", 1) for k in keys)
            lines[device] = [f"{k}={v}" for k, v in merged.items()]
            p.write_text("".join(f"{dev} {' '.join(keys)}\n" for dev, keys in lines.items()))
        else:
            p.write_text(value)

    def kill(self, pid: int, sig: int) -> None:
        self.signals.append((pid, sig))
        if sig == signal.SIGKILL:
            for procs in self.mount.rglob("cgroup.procs"):
                self.set_procs(procs.parent, [p for p in self.procs(procs.parent) if p != pid])

    def wait_changed(self, fd: int, timeout: float) -> None:
        self.clock += timeout

    def sleep(self, seconds: float) -> None:
        self.clock += seconds

    def monotonic(self) -> float:
        return self.clock

    # --- kernel rules ------------------------------------------------------------------------
    def _files(self, path: Path, controllers: tuple[str, ...]) -> None:
        files = {
            "cgroup.controllers": " ".join(controllers) + "\n",
            "cgroup.subtree_control": "\n",
            "cgroup.procs": "",
            "cgroup.type": "domain\n",
            "cgroup.events": "populated 0\nfrozen 0\n",
            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
        }
        if "cgroup.kill" in self.features:
            files["cgroup.kill"] = ""
        if "cgroup.freeze" in self.features:
            files["cgroup.freeze"] = "0\n"
        for controller in controllers:
            for name, content in _CONTROLLER_FILES[controller].items():
                if name in ALL_FEATURES and name not in self.features:
                    continue
                files[name] = content
        for name, content in files.items():
            if not (path / name).exists():
                (path / name).write_text(content)

    def _move(self, target: Path, pid: int) -> None:
        if self._is_nonroot(target) and (target / "cgroup.subtree_control").read_text().split():
            raise _os_error(errno.EBUSY, target / "cgroup.procs")
        for procs in self.mount.rglob("cgroup.procs"):
            pids = self.procs(procs.parent)
            if pid in pids:
                pids.remove(pid)
                procs.write_text("".join(f"{p}\n" for p in pids))
        with open(target / "cgroup.procs", "a") as f:
            f.write(f"{pid}\n")
        self._refresh_events()

    def _subtree_control(self, cgroup: Path, value: str) -> None:
        available = (cgroup / "cgroup.controllers").read_text().split()
        enabled = (cgroup / "cgroup.subtree_control").read_text().split()
        for token in value.split():
            op, name = token[0], token[1:]
            if name not in available:
                raise _os_error(errno.ENOENT, cgroup / "cgroup.subtree_control")
            if op == "+":
                if self._is_nonroot(cgroup) and self.procs(cgroup):
                    raise _os_error(errno.EBUSY, cgroup / "cgroup.subtree_control")
                if name not in enabled:
                    enabled.append(name)
            elif name in enabled:
                enabled.remove(name)
        (cgroup / "cgroup.subtree_control").write_text(" ".join(enabled) + "\n")
        for child in cgroup.iterdir():
            if child.is_dir():
                (child / "cgroup.controllers").write_text(" ".join(enabled) + "\n")
                self._files(child, tuple(enabled))

    def _is_nonroot(self, cgroup: Path) -> bool:
        return (cgroup / "cgroup.type").exists()

    def _refresh_events(self) -> None:
        for events in self.mount.rglob("cgroup.events"):
            directory = events.parent
            populated = any(p.read_text().strip() for p in directory.rglob("cgroup.procs"))
            self._set_event(directory, "populated", "1" if populated else "0")

    def _set_event(self, cgroup: Path, key: str, value: str) -> None:
        events = cgroup / "cgroup.events"
        if not events.exists():
            return
        lines = dict(ln.split(" ", 1) for ln in events.read_text().splitlines() if ln)
        lines[key] = value
        events.write_text("".join(f"{k} {v}\n" for k, v in lines.items()))


class FakeSysfs:
    """A /sys with block devices laid out like the kernel's: symlinks from block/ and dev/block/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.block = root / "block"
        self.dev_block = root / "dev" / "block"
        self.block.mkdir(parents=True)
        self.dev_block.mkdir(parents=True)

    def disk(self, name: str, dev: str, *, size: int = 2048, hidden: bool = False) -> Path:
        """Add a whole disk; returns its device directory."""
        directory = self.root / "devices" / "pci0000:00" / "block" / name
        if name.startswith(("dm-", "loop", "zram", "ram", "md")):
            directory = self.root / "devices" / "virtual" / "block" / name
        directory.mkdir(parents=True)
        (directory / "dev").write_text(f"{dev}\n")
        (directory / "size").write_text(f"{size}\n")
        (directory / "slaves").mkdir()
        if hidden:
            (directory / "hidden").write_text("1\n")
        (self.block / name).symlink_to(directory)
        (self.dev_block / dev).symlink_to(directory)
        return directory

    def partition(self, disk: str, name: str, dev: str, number: int) -> Path:
        """Add a partition under a disk; returns its directory."""
        directory = (self.block / disk).resolve() / name
        directory.mkdir()
        (directory / "dev").write_text(f"{dev}\n")
        (directory / "partition").write_text(f"{number}\n")
        (self.dev_block / dev).symlink_to(directory)
        return directory

    def slave(self, holder: str, device_dir: Path) -> None:
        """Record device_dir (a disk or partition) as underlying the stacked device holder."""
        (self.block / holder).resolve().joinpath("slaves", device_dir.name).symlink_to(device_dir)


MakeFakeV2 = Callable[..., FakeV2Host]


def v1_hierarchies_mounted() -> bool:
    """Whether this machine mounts any cgroup v1 controller hierarchy we use."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    wanted = {"cpu", "cpuacct", "memory", "pids", "blkio", "freezer"}
    for line in lines:
        fields = line.split()
        if "-" in fields:
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup" and wanted & set(fields[sep + 3].split(",")):
                return True
    return False


def cgroup2_mount() -> str | None:
    """Where this machine mounts cgroup2 (the root on v2 hosts, often unified/ on hybrid ones)."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "-" in fields and fields[fields.index("-") + 1] == "cgroup2":
            return fields[4]
    return None


# What the engine's spawn shim does first: join the job by writing "0" to every cgroup.procs.
JOIN = (
    "import os, sys\n"
    "for p in sys.argv[1:]:\n"
    "    fd = os.open(p, os.O_WRONLY)\n"
    "    os.write(fd, b'0')\n"
    "    os.close(fd)\n"
)
# A long-running job that says when it has joined.
SLEEP = "print('joined', flush=True)\nos.execvp('sleep', ['sleep', '300'])\n"


def wait_exited(pid_fd: int, timeout: float = 10.0) -> bool:
    """Whether the process behind pid_fd exited within timeout (pidfds poll readable on exit)."""
    return bool(select.select([pid_fd], [], [], timeout)[0])


def python(code: str, procs_files: tuple[str, ...], **kwargs: object) -> subprocess.Popen[str]:
    """Run python code in a child that first joins the cgroups behind procs_files."""
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", JOIN + code, *procs_files], text=True, **kwargs
    )

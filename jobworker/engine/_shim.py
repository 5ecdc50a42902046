"""Job launcher, run as ``python -I -S _shim.py ARGS -- EXE ARGV0 ARGS...`` by the engine.

Why a separate program: the server is multi-threaded (gRPC), where running Python code between fork and
exec (``preexec_fn``) is unsafe. This fresh, single-threaded interpreter joins the job's cgroup and namespaces
before the user's command runs its first instruction; every descendant inherits both.

Standard library only, one file: with ``-I -S`` neither site-packages nor this directory is on sys.path.

Process layout with namespaces::

    engine ┄┄ holder (host namespaces, host root, own session: owns the pipes, writes the spool and the
                │      exit file, keeps the cgroup until empty; see _holder.py)
                └── init (PID 1 of the job's PID namespace, in the cgroup, in new mount/net/UTS/IPC
                      │   namespaces: builds the job's root, reaps orphans, forwards signals)
                      └── command

Without namespaces (not root) the holder forks the command directly; it joins the cgroup and gets a process
group of its own before exec.

With ``--sandbox`` (strict isolation) init also builds the job's root and the command drops to the job's
uid, empties its capabilities and loads the seccomp filter before exec (``_confine.py``).

init reports to the holder on a pipe (text lines, each written atomically): ``started`` after a successful
exec, ``failed KIND ERRNO MESSAGE`` when setup (KIND ``setup``), the working directory (``cwd``) or the exec
(``exec``) failed, ``exit N`` / ``signal N`` when the command ended. The holder tells the engine (its
protocol is in _holder.py).
"""

# Not "signal": it imports enum, which costs milliseconds on every job start.
import _signal as signal  # type: ignore[import-not-found]
import _socket
import array
import ctypes
import errno
import fcntl
import gc
import os
import struct
import sys

# -I keeps this file's directory off sys.path; the sandbox steps live beside it.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _confine  # type: ignore[import-not-found]
import _holder  # type: ignore[import-not-found]

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REC = 16384
MS_PRIVATE = 1 << 18
TIOCSCTTY = 0x540E
TIOCSPTLCK = 0x40045431
TIOCGPTN = 0x80045430
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
# What the launcher and init pass on to the job (a stop is SIGTERM).
# A stop's signals: init passes them to every process of the job. The others reach the command only.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
# Also what a Signal call may send (validation.SIGNALS, less SIGKILL): init of a PID namespace drops a
# signal it has no handler for, so each one needs a forwarding handler to reach the command.
FORWARDED = {
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCONT,
    signal.SIGWINCH,
}


# The command's environment: exactly what the engine gave us, in the fork server's request or as --setenv
# flags; never this interpreter's own. The caller chose the job's variables and this process runs as root:
# LD_PRELOAD and friends must never reach it (the direct path starts it with an empty environment).
ENVIRON: dict[str, str] = {}


SetupError = _confine.SandboxError
# Compiled seccomp programs by path: the fork server reads each once, its launchers inherit the bytes.
_SECCOMP: dict[str, bytes] = {}
# The fork server's prepared host view (--template), once built: each job then only adds its own mounts.
_TEMPLATE: dict[str, bool] = {}


def report(fd: int, line: str) -> None:
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode())
    except OSError:
        pass  # the engine is gone; nothing left to tell


_LIBC: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise SetupError(err, f"{what}: {os.strerror(err)}")


def join_cgroups(procs_files: list[str]) -> None:
    for path in procs_files:
        try:
            with open(path, "w") as f:
                f.write("0")
        except OSError as e:
            raise SetupError(e.errno or 0, f"joining the job's cgroup: {e.strerror}") from None


def setup_namespace_inside(hostname: str, *, mount_proc: bool) -> None:
    """Runs as PID 1 of the new namespaces: private mounts and own /proc (unless the sandbox made them),
    loopback up, hostname."""
    c = libc()
    if mount_proc:
        check(c.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
        check(
            c.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
            "mounting /proc",
        )
    check(c.sethostname(hostname.encode(), len(hostname.encode())), "setting hostname")
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
    except OSError as e:
        raise SetupError(e.errno or 0, f"bringing up loopback: {e.strerror}") from None
    finally:
        sock.close()


def execvpe(argv: list[str], env: dict[str, str]) -> None:
    """execvp(3) with the job's PATH; os.execvpe would import modules the job's user may not read."""
    command = argv[0]
    if "/" in command:
        os.execve(command, argv, env)
    failure: OSError | None = None
    for directory in env.get("PATH", "/usr/bin:/bin").split(":"):
        try:
            os.execve(os.path.join(directory or ".", command), argv, env)
        except OSError as e:
            # Like execvp: keep looking past missing entries, remember the first real refusal.
            if e.errno not in (errno.ENOENT, errno.ENOTDIR) and failure is None:
                failure = e
    raise failure or OSError(errno.ENOENT, os.strerror(errno.ENOENT))


def take_terminal(slave: str) -> None:
    """In the command's process: a session of its own whose controlling terminal is the job's pty."""
    os.setsid()
    fd = os.open(slave, os.O_RDWR)
    fcntl.ioctl(fd, TIOCSCTTY, 0)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


def open_terminal(status_fd: int, winsize: str, owner: "tuple[int, int] | None") -> str:
    """Open a pty in this process's view (inside the sandbox: the job's own devpts), hand its master to the
    holder over the status socket and return the slave's path (the command's stdin, stdout and stderr)."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
        slave = f"/dev/pts/{number}"
        if owner is not None:
            # The job's own terminal, as a login's is: it may reopen it by name (tty, ssh, sudo -S).
            os.chown(slave, owner[0], owner[1])
        rows, cols = _holder.parse_winsize(winsize)
        _holder.set_winsize(master, rows, cols)
        sock = _socket.socket(fileno=os.dup(status_fd))
        try:
            sock.sendmsg([b"pty\n"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack("i", master))])
        finally:
            sock.close()
    finally:
        os.close(master)
    return slave


def exec_command(
    argv: list[str], cwd: str, plan: "_confine.Plan | None", err_w: int, terminal: str = ""
) -> None:
    """In the command's process: confine, restore what Python changed, then exec; on failure report and die.

    Everything that depends on the job's view (cwd, the PATH search) happens here, after the sandbox is in
    place and as the job's user, so a path the job cannot reach fails exactly as it would for the job.
    """
    kind = "setup"
    try:
        os.umask(0o022)
        if terminal:
            take_terminal(terminal)
        # Exactly 0, 1 and 2 reach the command; err_w is close-on-exec.
        os.closerange(3, err_w)
        os.closerange(err_w + 1, 1 << 20)
        if plan is not None:
            _confine.drop_privileges(plan.uid, plan.gid)
        kind = "cwd"
        os.chdir(cwd)
        kind = "setup"
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, *FORWARDED):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        if plan is not None:
            _confine.load_seccomp(plan.seccomp)
        kind = "exec"
        execvpe(argv, ENVIRON)
    except SetupError as e:
        os.write(err_w, f"{kind} {e.errno} {e}".encode())
    except OSError as e:
        os.write(err_w, f"{kind} {e.errno or 0} {e.strerror}".encode())
    except BaseException as e:
        os.write(err_w, f"{kind} 0 {type(e).__name__}".encode())
    os._exit(127)


def supervise(
    argv: list[str], cwd: str, plan: "_confine.Plan | None", status_fd: int, terminal: str = ""
) -> int:
    """As init: fork the command, report its start, reap every child, report its end; returns our code."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        os.close(err_r)
        exec_command(argv, cwd, plan, err_w, terminal)
    os.close(err_w)
    with os.fdopen(err_r, "rb") as f:
        failure = f.read()
    if failure:
        os.waitpid(child, 0)
        report(status_fd, f"failed {failure.decode(errors='replace')}")
        return 127
    report(status_fd, "started")

    def forward(signum: int, _frame: object) -> None:
        try:
            # As PID 1 of the job, -1 reaches every process of the job, including ones that left the
            # process group: what a stop needs. Any other signal (jw kill) is for the command alone, as
            # docker kill signals a container's main process (a USR1 must not kill the shell's `sleep`).
            os.kill(-1 if signum in STOP_SIGNALS else child, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    # Anything that arrived since main() blocked these is delivered now, to the handler.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        if pid == child:
            break
    if os.WIFSIGNALED(status):
        report(status_fd, f"signal {os.WTERMSIG(status)}")
    else:
        report(status_fd, f"exit {os.waitstatus_to_exitcode(status)}")
    # Leaving PID 1 makes the kernel kill whatever the command left behind in the namespace.
    return 0


def parse(args: list[str]) -> "tuple[dict[str, str], list[str], _confine.Plan | None]":
    """Flags before ``--`` (single values in a dict, the sandbox's in a Plan) and the command's argv."""
    end = args.index("--")
    flags: dict[str, str] = {}
    plan = _confine.Plan() if "--sandbox" in args[:end] else None
    i = 0
    while i < end:
        flag = args[i]
        if flag in ("--namespaces", "--stdin"):
            flags[flag] = ""
            i += 1
            continue
        value = args[i + 1]
        i += 2
        if plan is not None and flag == "--bind":
            source, target, mode = value.rsplit(":", 2)
            plan.binds.append((source, target, mode == "rw"))
        elif plan is not None and flag == "--mask":
            plan.masks.append(value)
        elif flag in ("--cgroup-procs", "--setenv", "--stats-file"):
            flags[flag] = flags[flag] + "\0" + value if flag in flags else value
        else:
            flags[flag] = value
    if plan is not None:
        plan.stage = flags["--sandbox"]
        plan.uid, plan.gid = int(flags["--uid"]), int(flags["--gid"])
        plan.scratch_bytes = int(flags["--scratch-bytes"])
        plan.workdir = flags["--workdir"]
        plan.seccomp = seccomp_program(flags["--seccomp"])
    return flags, args[end + 1 :], plan


def run_init(
    flags: dict[str, str], argv: list[str], cwd: str, plan: "_confine.Plan | None", status_fd: int
) -> int:
    """PID 1 of the job's namespaces: make the others, join the cgroup, build the root, supervise."""
    try:
        check(libc().unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET), "creating namespaces")
        join_cgroups(flags["--cgroup-procs"].split("\0") if "--cgroup-procs" in flags else [])
        if plan is not None:
            os.umask(0)
            template = flags.get("--template", "")
            if _TEMPLATE.get(template):
                _confine.enter_template(plan, template)
            else:
                _confine.build_root(plan)
        setup_namespace_inside(flags.get("--hostname", "job"), mount_proc=plan is None)
        terminal = ""
        if "--tty" in flags:
            owner = (plan.uid, plan.gid) if plan is not None else None
            terminal = open_terminal(status_fd, flags["--tty"], owner)
        return supervise(argv, cwd, plan, status_fd, terminal)
    except SetupError as e:
        report(status_fd, f"failed setup {e.errno} {e}")
    except OSError as e:
        report(status_fd, f"failed setup {e.errno or 0} {e.strerror}")
    except BaseException as e:
        report(status_fd, f"failed setup 0 {type(e).__name__}")
    return 126


def run_command(
    flags: dict[str, str], argv: list[str], cwd: str, plan: "_confine.Plan | None", err_w: int
) -> None:
    """Without namespaces: the holder's child joins the cgroup, leads a process group of its own, execs."""
    terminal = ""
    try:
        join_cgroups(flags["--cgroup-procs"].split("\0") if "--cgroup-procs" in flags else [])
        # A group of its own: a stop signals the job's group, never the holder. (With a terminal the
        # command's own session, made before exec, is that group: setsid refuses a group leader.)
        if "--tty" in flags:
            terminal = open_terminal(err_w, flags["--tty"], None)
        else:
            os.setpgid(0, 0)
    except SetupError as e:
        os.write(err_w, f"setup {e.errno} {e}".encode())
        os._exit(126)
    except OSError as e:
        os.write(err_w, f"setup {e.errno or 0} opening a terminal: {e.strerror}".encode())
        os._exit(126)
    exec_command(argv, cwd, plan, err_w, terminal)


def main(args: list[str]) -> int:
    """The holder: set up the pipes and the spool, fork the job's first process, hold it until it ends."""
    flags, argv, plan = parse(args)
    ctl_fd = int(flags["--ctl-fd"])
    namespaces = "--namespaces" in flags
    cwd = flags.get("--cwd", "/")
    if "--setenv" in flags:
        ENVIRON.update(entry.split("=", 1) for entry in flags["--setenv"].split("\0"))  # type: ignore[misc]
    os.set_inheritable(ctl_fd, False)
    # A server that went away must never kill the holder through a write to its socket.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # Block rather than ignore: a stop can come as soon as the command runs, before init's forwarding
    # handlers exist; blocked, it stays pending and reaches them once they are installed. (An ignored
    # signal would be lost, and init of a PID namespace drops signals it has no handler for.)
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        holder = _holder.Holder(ctl_fd, flags)
        if namespaces:
            # Only the holder's children enter it: the holder stays in the host's PID namespace.
            check(libc().unshare(CLONE_NEWPID), "creating the PID namespace")
        child = os.fork()
    except SetupError as e:
        report(ctl_fd, f"failed setup {e.errno} {e}")
        return 126
    except OSError as e:
        report(ctl_fd, f"failed setup {e.errno or 0} {e.strerror}")
        return 126
    if child == 0:
        status_w = holder.into_child()
        if namespaces:
            os._exit(run_init(flags, argv, cwd, plan, status_w))
        run_command(flags, argv, cwd, plan, status_w)
    holder.forked(child)

    def forward(signum: int, _frame: object) -> None:
        # Someone (root) signalled the holder: the job's first process passes it on.
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    code: int = holder.run(namespaces=namespaces)
    return code


def seccomp_program(path: str) -> bytes:
    """The compiled filter at path, read once per process (a fork server's launchers inherit it)."""
    if path not in _SECCOMP:
        with open(path, "rb") as f:
            _SECCOMP[path] = f.read()
    return _SECCOMP[path]


def preload_seccomp(args: list[str]) -> None:
    """Read a request's seccomp program here, in the fork server, so every later launcher inherits it."""
    if "--seccomp" in args:
        try:
            seccomp_program(args[args.index("--seccomp") + 1])
        except OSError:
            pass  # the launcher tries again and reports the failure


def prepare_template(args: list[str]) -> None:
    """Build the host view of strict isolation once, in this process's own mount namespace (first request).

    What every job's root shares (the host's entries read-only, sysfs, masks) then costs nothing per job:
    a launcher's new mount namespace starts as a copy of ours. On failure jobs build it themselves.
    """
    if "--template" not in args[: args.index("--")]:
        return
    path = args[args.index("--template") + 1]
    if path in _TEMPLATE:
        return
    _TEMPLATE[path] = False
    try:
        _flags, _argv, plan = parse(args)
        if plan is not None:
            _confine.build_template(plan, path)
            _TEMPLATE[path] = True
            # Only strict isolation asks for a template, and this fork server serves one engine.
            _confine.empty_bounding_set()
    except (OSError, SetupError) as e:
        sys.stderr.write(f"jobworker fork server: no sandbox template, jobs build their own root: {e}\n")


def launch(ctl_fd: int, cwd: str, env: list[str], args: list[str]) -> int:
    """In a fork of the fork server: become the job's holder (a session of its own, then main)."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        # The holder outlives the server: nothing of the server's stdio may reach it (a pipe the server
        # logs into would stay open as long as any job runs).
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if null > 2:
            os.close(null)
        ENVIRON.clear()
        ENVIRON.update(entry.split("=", 1) for entry in env)  # type: ignore[misc]
        return main(["--ctl-fd", str(ctl_fd), "--cwd", cwd, *args])
    except OSError as e:
        report(ctl_fd, f"failed setup {e.errno or 0} {e.strerror}")
    except BaseException as e:
        report(ctl_fd, f"failed setup 0 {type(e).__name__}")
    return 126


def fork_server(control_fd: int) -> int:
    """Serve launch requests from the engine: fork a warm copy of this process per job.

    A fork of this small, single-threaded, already-initialised interpreter skips the interpreter start-up
    that otherwise dominates a job's start latency. Requests arrive on a SOCK_SEQPACKET socket: one message
    ``cwd NUL n NUL env1 ... NUL envn NUL shim-arg ...`` carrying the holder's end of its socket to the
    engine as SCM_RIGHTS; the reply is the holder's pid. EOF (the engine went away) ends the server.
    """
    libc()  # loaded once here, inherited by every launcher
    # Every holder and init is a fork of this process: the collector must not touch (and so copy) the pages
    # of the objects they share; none of them makes cycles worth collecting.
    gc.freeze()
    gc.disable()
    sock = _socket.socket(fileno=control_fd)
    fd_bytes = array.array("i").itemsize

    def reap(_signum: int, _frame: object) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    signal.signal(signal.SIGCHLD, reap)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while True:
        data, ancdata, _flags, _addr = sock.recvmsg(1 << 17, _socket.CMSG_SPACE(fd_bytes))
        if not data:
            return 0
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        fields = [os.fsdecode(f) for f in data.split(b"\0")]
        if len(fds) != 1 or len(fields) < 2 or not fields[1].isdigit():
            for fd in fds:
                os.close(fd)
            sock.send(b"0")
            continue
        cwd, count = fields[0], int(fields[1])
        env, args = fields[2 : 2 + count], fields[2 + count :]
        preload_seccomp(args)
        prepare_template(args)
        pid = os.fork()
        if pid == 0:
            sock.close()
            os._exit(launch(fds[0], cwd, env, args))
        for fd in fds:
            os.close(fd)
        sock.send(b"%d" % pid)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fork-server"]:
        sys.exit(fork_server(int(sys.argv[2])))
    sys.exit(main(sys.argv[1:]))

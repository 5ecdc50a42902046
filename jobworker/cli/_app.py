"""The `jw` click application: global connection options, one command per operation."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from click.shell_completion import CompletionItem

from jobworker.cli._exit import (
    ConnectionExit,
    ExitCode,
    JwError,
    PreconditionExit,
    exit_code_help,
    exit_for,
)
from jobworker.cli._follow import OutputPump
from jobworker.cli._input import StdinPump, StdinSource, follow_resizes, raw_terminal, terminal_size
from jobworker.cli._params import (
    DURATION,
    ENV_ENTRY,
    LABEL,
    POINT_IN_TIME,
    POSITIVE_DURATION,
    SIZE,
    TIME_TEXT,
    LimitType,
    label_map,
)
from jobworker.cli._reconnect import Reconnect
from jobworker.cli._render import (
    job_details,
    job_json,
    job_table,
    newest_first,
    server_info_details,
    server_info_json,
)
from jobworker.client import (
    DEFAULT_TIMEOUT,
    LIMIT_FIELDS,
    Client,
    ClientConfig,
    ClientError,
    ConnectionFailedError,
    FailedPreconditionError,
    JobInfo,
    JobState,
    Limits,
    OutputWindow,
    StreamEnd,
    StreamEndReason,
    StreamSelection,
    TerminalSize,
    load_config,
)

F = TypeVar("F", bound=Callable[..., Any])

EPILOG = (
    exit_code_help()
    + """

\b
Connection settings, per setting: option > environment (JW_SERVER, JW_CA,
JW_CERT, JW_KEY) > profile (--profile, JW_PROFILE or default_profile) in
$XDG_CONFIG_HOME/jw/config.toml. Sizes use binary units (k=1024, M=1024k);
durations look like 500ms, 10s, 1m30s.

\b
A JOB argument is a job's full id, its name, or a unique prefix of its id,
tried in that order (a name: your own job first). Only jobs you may see
count; a reference that fits several is refused, listing them.

\b
Shell completion (bash; zsh_source and fish_source for other shells):
  eval "$(_JW_COMPLETE=bash_source jw)"
"""
)

_JOB_ARGUMENT_HELP = (
    "JOB is a job's full id, its name (your own job first), or a unique prefix of its id, "
    "tried in that order; only jobs you may see count."
)

# Options stop at the command: `jw run -- ls -la` and `jw run ls -la` both pass -la to ls.
_JOB_CONTEXT = {"allow_interspersed_args": False}
_ALIASES = {"ps": "list"}
_STATE_CHOICES = [state.value for state in JobState if state is not JobState.UNKNOWN]


@dataclass(frozen=True)
class Settings:
    """The global options; the client is built from them only when a command needs it."""

    server: str | None
    ca: Path | None
    cert: Path | None
    key: Path | None
    profile: str | None
    timeout: float

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Settings:
        """Build from the root context's parameters."""
        return cls(
            server=params.get("server"),
            ca=params.get("ca"),
            cert=params.get("cert"),
            key=params.get("key"),
            profile=params.get("profile"),
            timeout=params.get("timeout") or DEFAULT_TIMEOUT,
        )

    def config(self) -> ClientConfig:
        """Resolve the connection settings (options > environment > config file)."""
        return load_config(server=self.server, ca=self.ca, cert=self.cert, key=self.key, profile=self.profile)

    def connect(self, timeout: float | None = None) -> Client:
        """Open a client with the resolved settings."""
        return Client(self.config(), timeout=timeout or self.timeout)


class JwGroup(click.Group):
    """Resolves aliases and turns client errors into exit-coded one-line errors."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, _ALIASES.get(cmd_name, cmd_name))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClientError as exc:
            raise exit_for(exc) from exc
        except KeyboardInterrupt:
            # click would print "Aborted!" and exit 1; a Ctrl-C is 130 like everywhere else (a second
            # one during jw run's stop lands here too: the server finishes the stop on its own).
            raise click.exceptions.Exit(ExitCode.INTERRUPTED) from None


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.find_object(Settings)
    assert settings is not None, "the jw group stores Settings before any command runs"
    return settings


def _connect(ctx: click.Context) -> Client:
    client = _settings(ctx).connect()
    ctx.call_on_close(client.close)
    return client


def _complete_job_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    # Completion must never print errors into the user's shell: any failure means no candidates.
    try:
        settings = Settings.from_params(ctx.find_root().params)
        with settings.connect(timeout=2) as client:
            jobs = client.list()
    except Exception:
        return []
    items = [
        CompletionItem(job.id, help=f"{job.state.value}  {job.command}")
        for job in jobs
        if job.id.startswith(incomplete)
    ]
    items += [
        CompletionItem(job.name, help=f"{job.state.value}  {job.command}")
        for job in jobs
        if job.name and job.name.startswith(incomplete)
    ]
    return items


def _job_id_argument(f: F) -> F:
    return click.argument("job_id", metavar="JOB", shell_complete=_complete_job_id)(f)


def _json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)


def _job_options(f: F) -> F:
    options = [
        *(
            click.option(f"--{limit.option}", limit.field, type=LimitType(limit), help=limit.help)
            for limit in LIMIT_FIELDS
        ),
        click.option(
            "--env",
            "-e",
            "env",
            type=ENV_ENTRY,
            multiple=True,
            help="Set KEY=VALUE in the job's environment (repeatable); KEY alone passes "
            "this shell's value. Jobs never inherit the server's environment.",
        ),
        click.option("--cwd", metavar="DIR", help="Working directory of the job on the server."),
        click.option(
            "-i",
            "--interactive",
            "stdin",
            is_flag=True,
            help="Keep the job's stdin open: jw run copies this stdin to it (binary-safe, end of file "
            "passed on); after jw start, jw attach does.",
        ),
        click.option(
            "-t",
            "--tty",
            is_flag=True,
            help="Run the job on a terminal of this terminal's size (its stdin, stdout and stderr; all its "
            "output is stdout). With -i and a terminal here, jw run puts it in raw mode and passes resizes.",
        ),
        click.option(
            "--name",
            metavar="NAME",
            help="Name the job, to refer to it by name: unique among your stored jobs until it is "
            "deleted; letters, digits, '_', '.', '-', starting with a letter or digit (max 128).",
        ),
        click.option(
            "--label",
            "-l",
            "labels",
            type=LABEL,
            multiple=True,
            help="Label the job KEY=VALUE (repeatable), to select jobs by with jw list/prune -l. "
            "Keys as Kubernetes label keys ([prefix/]name); at most 64 labels.",
        ),
        click.argument(
            "command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="[--] CMD [ARGS]..."
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@dataclass(frozen=True)
class JobSpec:
    """What start and run ask the server to run."""

    command: str
    args: tuple[str, ...]
    env: dict[str, str]
    cwd: str | None
    limits: Limits | None
    name: str | None
    labels: dict[str, str]
    stdin: bool = False
    tty: TerminalSize | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> JobSpec:
        """Build from the values of the options added by `_job_options`."""
        limits = Limits(**{limit.field: options[limit.field] for limit in LIMIT_FIELDS})
        command, *args = options["command"]
        return cls(
            command=command,
            args=tuple(args),
            env=dict(options["env"]),
            cwd=options["cwd"],
            limits=None if limits == Limits() else limits,
            stdin=options["stdin"],
            tty=terminal_size() if options["tty"] else None,
            name=options["name"],
            labels=label_map(options["labels"], "--label"),
        )

    def start(self, client: Client) -> JobInfo:
        """Start this job through `client`."""
        return client.start(
            self.command,
            self.args,
            env=self.env,
            cwd=self.cwd,
            limits=self.limits,
            stdin=self.stdin,
            tty=self.tty,
            name=self.name,
            labels=self.labels,
        )


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _resume_hint(
    job_id: str, offset: int, streams: StreamSelection, window: OutputWindow | None = None
) -> str:
    selection = "" if streams == "both" else f" --{streams}"
    if window is not None:
        if isinstance(window.until, str):
            selection += f" --until {shlex.quote(window.until)}"
        if window.limit_bytes is not None:
            selection += f" --limit-bytes {window.limit_bytes}"
        if window.timestamps:
            selection += " --timestamps"
    return f"jw logs -f{selection} --offset {offset} {job_id}"


def _follow(
    ctx: click.Context,
    client: Client,
    pump: OutputPump,
    streams: StreamSelection,
    *,
    follow: bool,
    reached: bool,
) -> StreamEnd:
    """Copy the job's output until its stream ends; following, ride out a server restart (reconnect with
    backoff for up to --timeout) once the server has been reached."""
    retry = Reconnect(_settings(ctx).timeout) if follow else None
    while True:
        before = pump.offset
        window = pump.remaining_window
        if window is None:
            # The byte limit was used up before the server said so: the stream is done.
            return StreamEnd(StreamEndReason.LIMIT_REACHED, truncated=False, job=None)
        try:
            end = pump.pump(
                client.stream(pump.job_id, streams=streams, offset=pump.offset, follow=follow, window=window)
            )
        except ConnectionFailedError as exc:
            failure = exc.message
            reached = reached or exc.server_sent or pump.offset > before
        else:
            if end is not None and end.reason is not StreamEndReason.SERVER_SHUTDOWN:
                if retry is not None:
                    retry.succeeded()
                return end
            failure = "the server shut down" if end else "the output stream broke off"
            reached = True
        if retry is not None and reached:
            if pump.offset > before:
                retry.succeeded()
            if retry.again(f"{failure} while streaming job {pump.job_id}"):
                continue
        hint = _resume_hint(pump.job_id, pump.offset, streams, pump.remaining_window)
        raise ConnectionExit(f"{failure} while streaming job {pump.job_id}; resume with: {hint}")


def _wait(ctx: click.Context, client: Client, job_id: str) -> JobInfo:
    """The job's final status; rides out a server restart like _follow (once the server answered)."""
    retry = Reconnect(_settings(ctx).timeout)
    reached = False
    while True:
        try:
            job = client.wait(job_id)
        except ConnectionFailedError as exc:
            reached = reached or exc.server_sent
            if not reached:
                raise
            if retry.again(f"{exc.message} while waiting for job {job_id}"):
                continue
            raise ConnectionExit(
                f"{exc.message} while waiting for job {job_id}; wait again with: jw wait {job_id}"
            ) from exc
        retry.succeeded()
        return job


def _job_exit_code(job: JobInfo) -> int:
    if job.state is JobState.OOM_KILLED:
        click.echo(f"jw: job {job.id} was OOM-killed (it reached its memory limit)", err=True)
        return 128 + (job.signal or 9)
    if job.state is JobState.LOST:
        click.echo(f"jw: the server lost track of job {job.id} (it restarted)", err=True)
        return ExitCode.ERROR
    code = job.shell_exit_code
    if code is None:
        click.echo(f"jw: job {job.id} ended in state {job.state.value}", err=True)
        return ExitCode.ERROR
    return code


@click.group(
    cls=JwGroup,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("--server", metavar="HOST:PORT", help="Server address.  [env: JW_SERVER]")
@click.option("--ca", type=click.Path(path_type=Path), help="CA certificate (PEM).  [env: JW_CA]")
@click.option("--cert", type=click.Path(path_type=Path), help="Client certificate (PEM).  [env: JW_CERT]")
@click.option("--key", type=click.Path(path_type=Path), help="Client private key (PEM).  [env: JW_KEY]")
@click.option("--profile", help="Profile of the config file to use.  [env: JW_PROFILE]")
@click.option(
    "--timeout",
    type=POSITIVE_DURATION,
    default=f"{DEFAULT_TIMEOUT:g}s",
    envvar="JW_TIMEOUT",
    show_default=True,
    help="How long to wait for the server to connect and answer.  [env: JW_TIMEOUT]",
)
@click.version_option(package_name="jobworker", prog_name="jw")
@click.pass_context
def jw(
    ctx: click.Context,
    server: str | None,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    profile: str | None,
    timeout: float,
) -> None:
    """Run and watch jobs on a jobworker server."""
    ctx.obj = Settings(server=server, ca=ca, cert=cert, key=key, profile=profile, timeout=timeout)


@jw.command(context_settings=_JOB_CONTEXT)
@_json_option
@_job_options
@click.pass_context
def start(ctx: click.Context, /, as_json: bool, **options: Any) -> None:
    """Start a job and print its id.

    \b
    Example:  id=$(jw start --memory 256M -- make -j4)
    """
    job = JobSpec.from_options(options).start(_connect(ctx))
    if as_json:
        _echo_json(job_json(job))
    else:
        click.echo(job.id)


@jw.command(context_settings=_JOB_CONTEXT)
@click.option(
    "--stop-on-interrupt",
    is_flag=True,
    help="On Ctrl-C stop the job (SIGTERM, SIGKILL after the server's grace period) "
    "instead of detaching from it.",
)
@_job_options
@click.pass_context
def run(ctx: click.Context, /, stop_on_interrupt: bool, **options: Any) -> None:
    """Start a job, stream its output and exit with its exit code.

    Output is copied byte for byte: the job's stdout to stdout, its stderr to stderr.
    Ctrl-C detaches (the job keeps running) unless --stop-on-interrupt is given; with -it on a
    terminal, Ctrl-C goes to the job like any key.

    \b
    Examples:  echo hello | jw run -i -- tr a-z A-Z
               jw run -it -- bash
    """
    client = _connect(ctx)
    spec = JobSpec.from_options(options)
    job = spec.start(client)
    with _attached(client, job.id, stdin=spec.stdin, tty=spec.tty is not None) as pump:
        _run_follow(ctx, client, job, stop_on_interrupt, pump)


@contextlib.contextmanager
def _attached(client: Client, job_id: str, *, stdin: bool, tty: bool) -> Iterator[StdinPump | None]:
    """While inside: our stdin goes to the job (stdin), our terminal raw and its size followed (tty)."""
    if not stdin:
        yield None
        return
    source = StdinSource()
    pump = StdinPump(client.config, client.timeout, job_id, source)
    with contextlib.ExitStack() as stack:
        if tty and sys.stdin.isatty():
            stack.enter_context(raw_terminal(sys.stdin.fileno()))
            stack.enter_context(follow_resizes(source))
        try:
            yield pump
        except KeyboardInterrupt:
            _refused(pump)
            raise
        finally:
            source.stop()
            # Its call ends at once now; closing the channel under a running call would wait for it.
            pump.join()


def _refused(pump: StdinPump | None) -> None:
    """After a KeyboardInterrupt: raise the input's refusal if that, not a Ctrl-C, caused it."""
    if pump is not None and pump.failure is not None:
        raise exit_for(pump.failure) from None


def _run_follow(
    ctx: click.Context, client: Client, job: JobInfo, stop_on_interrupt: bool, stdin: StdinPump | None
) -> None:
    pump = OutputPump(job.id)
    try:
        end = _follow(ctx, client, pump, "both", follow=True, reached=True)
    except KeyboardInterrupt:
        _refused(stdin)
        if not stop_on_interrupt:
            click.echo(f"jw: detached; job {job.id} keeps running", err=True)
            click.echo(f"jw: reattach with: {_resume_hint(job.id, pump.offset, 'both')}", err=True)
            ctx.exit(ExitCode.INTERRUPTED)
        click.echo(f"jw: interrupted; stopping job {job.id}", err=True)
        try:
            client.stop(job.id)
        except FailedPreconditionError:
            # It ended on its own meanwhile: then its own outcome is what we report.
            end = _follow(ctx, client, pump, "both", follow=True, reached=True)
            ctx.exit(_job_exit_code(end.job or client.status(job.id)))
        # Stopped because of the Ctrl-C: interrupted (130), as the exit-code table says, not the
        # SIGTERM the stop delivered. The rest of its output is still printed.
        _follow(ctx, client, pump, "both", follow=True, reached=True)
        ctx.exit(ExitCode.INTERRUPTED)
    ctx.exit(_job_exit_code(end.job or client.status(job.id)))


@jw.command(epilog=_JOB_ARGUMENT_HELP)
@_job_id_argument
@click.pass_context
def attach(ctx: click.Context, job_id: str) -> None:
    """Write this stdin to a running job's (started with -i or -t) and print its output from now on;
    exit with its exit code when it ends.

    On a job's terminal this terminal goes raw, as with jw run -it. Ctrl-C (without a terminal) or
    closing this terminal detaches: the job's stdin stays open for the next jw attach; end of file
    (Ctrl-D, the end of a pipe) closes it.
    """
    client = _connect(ctx)
    job = client.status(job_id)
    if not job.state.is_final and not job.stdin:
        raise PreconditionExit(f"job {job.id} was not started with its stdin open (jw start -i)")
    if job.state.is_final:
        raise PreconditionExit(f"job {job.id} has already ended ({job.state.value})")
    pump = OutputPump(job.id, job.stdout_bytes + job.stderr_bytes)
    with _attached(client, job.id, stdin=True, tty=job.tty) as stdin:
        try:
            end = _follow(ctx, client, pump, "both", follow=True, reached=True)
        except KeyboardInterrupt:
            _refused(stdin)
            click.echo(f"jw: detached; job {job.id} keeps running", err=True)
            ctx.exit(ExitCode.INTERRUPTED)
    ctx.exit(_job_exit_code(end.job or client.status(job.id)))


@jw.command()
@_job_id_argument
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new output until the job ends.")
@click.option("--stdout", "stdout_only", is_flag=True, help="Only the job's stdout.")
@click.option("--stderr", "stderr_only", is_flag=True, help="Only the job's stderr.")
@click.option(
    "--offset",
    type=click.IntRange(min=0),
    default=0,
    help="Start at this byte of the selected output (both streams interleaved by default).",
)
@click.option(
    "-n",
    "--tail",
    "tail_lines",
    type=click.IntRange(min=0),
    metavar="N",
    help="Start at the last N lines (0: only new output, with -f).",
)
@click.option(
    "--since",
    type=TIME_TEXT,
    help="Only output that arrived at or after this time: RFC 3339 (2026-12-01T10:00:00Z) or a duration "
    "ago (10m, 1h30m).",
)
@click.option(
    "--until",
    type=TIME_TEXT,
    help="Only output that arrived at or before this time (same forms); with -f, stop once it has passed.",
)
@click.option(
    "-t", "--timestamps", is_flag=True, help="Put each line's arrival time (RFC 3339, UTC) in front."
)
@click.option("--limit-bytes", type=SIZE, metavar="SIZE", help="Stop after this many bytes (e.g. 4096, 1M).")
@click.pass_context
def logs(
    ctx: click.Context,
    job_id: str,
    follow: bool,
    stdout_only: bool,
    stderr_only: bool,
    offset: int,
    tail_lines: int | None,
    since: str | None,
    until: str | None,
    timestamps: bool,
    limit_bytes: int | None,
) -> None:
    """Print a job's output; -f follows it until the job ends.

    Output is copied byte for byte: the job's stdout to stdout, its stderr to stderr. --tail, --since and
    --until pick a part of it (combined, the latest start wins; --offset resumes inside it). Times are when
    the server stored each piece the job wrote, so a line written in two pieces may be cut at a boundary.
    """
    if stdout_only and stderr_only:
        raise click.UsageError("--stdout and --stderr are mutually exclusive; omit both for both")
    streams: StreamSelection = "stdout" if stdout_only else "stderr" if stderr_only else "both"
    window = OutputWindow(
        tail_lines=tail_lines, since=since, until=until, limit_bytes=limit_bytes, timestamps=timestamps
    )
    client = _connect(ctx)
    try:
        pump = OutputPump(job_id, offset, window=window)
        _follow(ctx, client, pump, streams, follow=follow, reached=False)
    except KeyboardInterrupt:
        ctx.exit(ExitCode.INTERRUPTED)


def _job_ids_argument(f: F) -> F:
    return click.argument(
        "job_ids", metavar="JOB...", nargs=-1, required=True, shell_complete=_complete_job_id
    )(f)


@jw.command(epilog=_JOB_ARGUMENT_HELP)
@_job_ids_argument
@click.pass_context
def wait(ctx: click.Context, job_ids: tuple[str, ...]) -> None:
    """Wait until the jobs have ended; print each one's exit code and exit with the first non-zero.

    The exit codes are those of jw run (128+N for signal N). Waits as long as the jobs run.
    """
    client = _connect(ctx)
    first = ExitCode.OK.value
    try:
        for job_id in job_ids:
            code = _job_exit_code(_wait(ctx, client, job_id))
            click.echo(code)
            first = first or code
    except KeyboardInterrupt:
        ctx.exit(ExitCode.INTERRUPTED)
    ctx.exit(first)


def _each(ctx: click.Context, job_ids: tuple[str, ...], act: Callable[[str], JobInfo], as_json: bool) -> None:
    """Apply `act` to every job in turn; one failing job does not keep the others from their turn.

    Prints each id that succeeded (or the jobs as JSON), each failure as one `Error:` line, and exits
    with the exit code of the first failure.
    """
    done: list[JobInfo] = []
    failure: JwError | None = None
    for job_id in job_ids:
        try:
            job = act(job_id)
        except ClientError as exc:
            error = exit_for(exc)
            if len(job_ids) == 1:
                raise error from exc
            error.show()
            failure = failure or error
            continue
        done.append(job)
        if not as_json:
            click.echo(job.id)
    if as_json:
        _echo_json([job_json(job) for job in done] if len(job_ids) > 1 else job_json(done[0]))
    if failure is not None:
        ctx.exit(failure.exit_code)


@jw.command(epilog=_JOB_ARGUMENT_HELP)
@_job_ids_argument
@click.option(
    "--grace",
    type=DURATION,
    help="Time between SIGTERM and SIGKILL, e.g. 10s or 500ms.  [default: the server's, 10s]",
)
@_json_option
@click.pass_context
def stop(ctx: click.Context, job_ids: tuple[str, ...], grace: float | None, as_json: bool) -> None:
    """Stop running jobs and print each id once it is gone."""
    client = _connect(ctx)
    _each(ctx, job_ids, lambda job_id: client.stop(job_id, grace_seconds=grace), as_json)


@jw.command(epilog=_JOB_ARGUMENT_HELP)
@_job_ids_argument
@_json_option
@click.pass_context
def rm(ctx: click.Context, job_ids: tuple[str, ...], as_json: bool) -> None:
    """Delete ended jobs and their output; print each id deleted.

    Writers delete their own jobs, admins any. A running job is refused (exit 6): stop it first.
    """
    client = _connect(ctx)
    _each(ctx, job_ids, client.delete, as_json)


def _selector_option(what: str) -> Callable[[F], F]:
    return click.option(
        "--label",
        "-l",
        "labels",
        type=LABEL,
        multiple=True,
        help=f"Only {what} with label KEY=VALUE (repeatable: all must match).",
    )


@jw.command()
@click.option(
    "--until",
    type=POINT_IN_TIME,
    help="Only jobs that ended before this time: RFC 3339 (2026-12-01T10:00:00Z) or a duration "
    "ago (10m, 1h30m).  [default: now]",
)
@_selector_option("jobs")
@_json_option
@click.pass_context
def prune(
    ctx: click.Context, until: datetime | None, labels: tuple[tuple[str, str], ...], as_json: bool
) -> None:
    """Delete your ended jobs (an admin's: everyone's) and their output; print each id deleted."""
    jobs = _connect(ctx).prune(until, labels=label_map(labels, "--label"))
    if as_json:
        _echo_json([job_json(job) for job in jobs])
    else:
        for job in jobs:
            click.echo(job.id)


@jw.command(epilog=_JOB_ARGUMENT_HELP)
@click.option(
    "-s",
    "--signal",
    "signal_name",
    default="TERM",
    show_default=True,
    metavar="SIGNAL",
    help="Signal to send: HUP, INT, QUIT, KILL, USR1, USR2, TERM, CONT or WINCH (SIG prefix optional).",
)
@_job_ids_argument
@_json_option
@click.pass_context
def kill(ctx: click.Context, signal_name: str, job_ids: tuple[str, ...], as_json: bool) -> None:
    """Send a signal to running jobs' commands without stopping them; print each id signaled.

    Unlike stop, there is no SIGKILL after a grace period: the job decides what the signal means.
    """
    client = _connect(ctx)
    _each(ctx, job_ids, lambda job_id: client.signal(job_id, signal_name), as_json)


@jw.command(epilog=_JOB_ARGUMENT_HELP)
@_job_id_argument
@_json_option
@click.pass_context
def status(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show the status of a job."""
    job = _connect(ctx).status(job_id)
    if as_json:
        _echo_json(job_json(job))
    else:
        click.echo(job_details(job, datetime.now(UTC)))


@jw.command("list")
@click.option(
    "--state",
    "states",
    type=click.Choice(_STATE_CHOICES),
    multiple=True,
    help="Only jobs in this state (repeatable).",
)
@click.option("--owner", help="Only jobs of this owner (readers and admins).")
@_selector_option("jobs")
@click.option("--name", metavar="NAME", help="Only the job of this name (one per owner).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the job ids.")
@_json_option
@click.pass_context
def list_jobs(
    ctx: click.Context,
    states: tuple[str, ...],
    owner: str | None,
    labels: tuple[tuple[str, str], ...],
    name: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """List jobs, newest first (alias: ps)."""
    if quiet and as_json:
        raise click.UsageError("--quiet and --json are mutually exclusive")
    jobs = newest_first(
        _connect(ctx).list(
            states=[JobState(s) for s in states],
            owner=owner,
            labels=label_map(labels, "--label"),
            name=name,
        )
    )
    if as_json:
        _echo_json([job_json(job) for job in jobs])
    elif quiet:
        for job in jobs:
            click.echo(job.id)
    else:
        click.echo(job_table(jobs, datetime.now(UTC)))


@jw.command()
@_json_option
@click.pass_context
def info(ctx: click.Context, as_json: bool) -> None:
    """Show what the server enforces (isolation, limit defaults and ceilings) and who you are to it."""
    client = _connect(ctx)
    details = client.server_info()
    if as_json:
        _echo_json(server_info_json(details))
    else:
        click.echo(server_info_details(details, client.config.server))


@jw.command()
@click.pass_context
def health(ctx: click.Context) -> None:
    """Exit 0 if the server is serving, 1 if it answers not serving, 3 if it cannot be reached."""
    serving = _connect(ctx).health()
    click.echo("SERVING" if serving else "NOT_SERVING")
    if not serving:
        ctx.exit(ExitCode.ERROR)


def main() -> None:
    """Entry point of the `jw` console script."""
    jw(prog_name="jw")

"""Checks on a JobSpec before anything is started: input sanity, limits against ceilings, the executable."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Mapping
from typing import Any

from jobworker.engine.errors import InvalidSpecError
from jobworker.engine.job import JobSpec, Limits, OutputWindow
from jobworker.engine.limits import KINDS, LimitError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Signals a caller may send a running job. The job's init forwards each to the command (see
# _shim.FORWARDED); SIGKILL needs no forwarding (it ends init, and the PID namespace with it). SIGSTOP is
# left out: it would stop init, which cannot pass it on, and leave the command running.
SIGNALS: frozenset[signal.Signals] = frozenset(
    {
        signal.SIGHUP,
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGKILL,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGTERM,
        signal.SIGCONT,
        signal.SIGWINCH,
    }
)


# Job names, as docker's container names: a letter or digit, then letters, digits, '_', '.', '-'. A name
# shaped like a job id is refused: a reference to it would always find the job with that id first.
NAME_RULE = (
    "1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit, not shaped like a job id"
)
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
_JOB_ID_SHAPE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

# Label keys, as Kubernetes label keys: an optional DNS-subdomain prefix and '/', then a name segment.
LABEL_KEY_RULE = (
    "an optional DNS subdomain prefix (lower case, at most 253 characters) and '/', then 1 to 63 "
    "letters, digits, '-', '_' or '.', beginning and ending with a letter or digit"
)
_LABEL_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?")
MAX_LABEL_PREFIX = 253
MAX_LABEL_NAME = 63
# Values are free text (docker's are), bounded, on one line so listings stay readable.
MAX_LABEL_VALUE = 256
MAX_LABELS = 64


def _shown(text: str, limit: int = 48) -> str:
    """`text` fit for a one-line error message: bounded, control characters escaped."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in cut)


def check_name(name: str) -> None:
    """Refuse a job name outside NAME_RULE ("" means no name and is allowed)."""
    if name and (not _NAME.fullmatch(name) or _JOB_ID_SHAPE.fullmatch(name)):
        raise InvalidSpecError(f"invalid job name '{_shown(name)}': a name is {NAME_RULE}")


def check_labels(labels: Mapping[str, str], what: str = "label") -> None:
    """Refuse label keys outside LABEL_KEY_RULE, values over MAX_LABEL_VALUE or with control characters."""
    if len(labels) > MAX_LABELS:
        raise InvalidSpecError(f"{len(labels)} {what}s, at most {MAX_LABELS} allowed")
    for key, value in labels.items():
        prefix, slash, segment = key.rpartition("/")
        if not (
            _LABEL_NAME.fullmatch(segment)
            and len(segment) <= MAX_LABEL_NAME
            and (not slash or (_LABEL_PREFIX.fullmatch(prefix) and len(prefix) <= MAX_LABEL_PREFIX))
        ):
            raise InvalidSpecError(f"invalid {what} key '{_shown(key)}': a key is {LABEL_KEY_RULE}")
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidSpecError(
                f"{what} {_shown(key)}: the value is longer than {MAX_LABEL_VALUE} characters"
            )
        if not value.isprintable():
            raise InvalidSpecError(f"{what} {_shown(key)}: the value must not contain control characters")


def check_job_ref(ref: str) -> None:
    """Refuse what can be neither a job id, an id prefix nor a name (ids and prefixes fit the name rule)."""
    if not ref:
        raise InvalidSpecError("no job given: name a job by its id, a unique id prefix or its name")
    if not _NAME.fullmatch(ref):
        raise InvalidSpecError(f"'{_shown(ref)}' is neither a job id, an id prefix nor a job name")


def check_signal(number: int) -> signal.Signals:
    """The signal `number` names if a job may be sent it; InvalidSpecError naming the allowed ones."""
    if number not in {int(s) for s in SIGNALS}:
        allowed = ", ".join(s.name.removeprefix("SIG") for s in sorted(SIGNALS))
        raise InvalidSpecError(f"signal {number} may not be sent to a job; allowed: {allowed}")
    return signal.Signals(number)


def check_spec(spec: JobSpec) -> None:
    """Reject specs the kernel would refuse or misread (empty command, NUL bytes, bad env names)."""
    if not spec.command:
        raise InvalidSpecError("command must not be empty")
    if "\0" in spec.command or any("\0" in a for a in spec.args):
        raise InvalidSpecError("command and args must not contain NUL bytes")
    for key, value in spec.env.items():
        if not key or "=" in key or "\0" in key:
            shown = key.replace("\0", "\\0")
            raise InvalidSpecError(
                f"invalid environment variable name '{shown}': a name is non-empty, without '=' or NUL bytes"
            )
        if "\0" in value:
            raise InvalidSpecError(f"environment variable {key} must not contain NUL bytes")
    if spec.cwd is not None and "\0" in spec.cwd:
        raise InvalidSpecError("cwd must not contain NUL bytes")
    if spec.terminal is not None:
        check_terminal_size(*spec.terminal)
    check_name(spec.name)
    check_labels(spec.labels)


def check_terminal_size(rows: int, cols: int) -> None:
    """A terminal's window size: what the kernel's struct winsize holds (1 to 65535 each)."""
    if not (0 < rows <= 0xFFFF and 0 < cols <= 0xFFFF):
        raise InvalidSpecError(f"terminal size {rows}x{cols} is out of range (rows and columns: 1 to 65535)")


def effective_limits(requested: Limits, defaults: Limits, ceilings: Limits) -> Limits:
    """Fill unset limits from defaults; refuse values outside what the kernel accepts or above a ceiling."""
    values: dict[str, Any] = {}
    for kind in KINDS:
        value = getattr(requested, kind.field)
        if value is None:
            value = getattr(defaults, kind.field)
        if value is not None:
            try:
                value = kind.check(value, getattr(ceilings, kind.field))
            except LimitError as exc:
                raise InvalidSpecError(str(exc)) from None
        values[kind.field] = value
    return Limits(**values)


def check_limit_settings(defaults: Limits, ceilings: Limits) -> None:
    """Refuse server defaults the kernel would not accept or above their ceiling, before any job asks."""
    try:
        effective_limits(Limits(), defaults, ceilings)
    except InvalidSpecError as exc:
        # Otherwise every Start without that limit would fail with a message about a limit it never set.
        raise InvalidSpecError(f"default limits: {exc}") from None


def job_environment(extra: Mapping[str, str], *, home: str | None = None) -> dict[str, str]:
    """The job's whole environment: a sane PATH (and HOME) plus what the caller passed, never the server's."""
    base = {"PATH": DEFAULT_PATH}
    if home is not None:
        base["HOME"] = home
    return {**base, **extra}


def check_cwd(path: str) -> str:
    """Refuse a relative working directory; whether it exists is decided inside the job's view."""
    if not os.path.isabs(path):
        raise InvalidSpecError(f"cwd must be an absolute path, got '{path}'")
    return path


def check_window(window: OutputWindow) -> OutputWindow:
    """window if it can select anything sensible; InvalidSpecError (one line) naming what is wrong."""
    if window.tail_lines is not None and window.tail_lines < 0:
        raise InvalidSpecError(f"tail must not be negative (got {window.tail_lines})")
    if window.limit_bytes is not None and window.limit_bytes < 0:
        raise InvalidSpecError(f"limit_bytes must not be negative (got {window.limit_bytes})")
    if window.since_ns is not None and window.until_ns is not None and window.since_ns > window.until_ns:
        raise InvalidSpecError("since is after until: the window would hold nothing")
    return window

"""Riding out a server restart: bounded retries with backoff for the commands that follow a job."""

from __future__ import annotations

import time

import click

# The first retry comes quickly (a restart takes about a second), later ones back off up to this.
_FIRST_DELAY = 0.2
_MAX_DELAY = 2.0
# An outage is ridden out for this many times jw's --timeout: a restart's new server must also start up
# (reattach its jobs, probe the sandbox) before it answers.
WINDOW_TIMEOUTS = 3


class Reconnect:
    """Decides whether to try again after the server went away, for at most WINDOW_TIMEOUTS times jw's
    --timeout (how long it waits for a server to connect and answer) per outage.
    """

    def __init__(self, timeout: float) -> None:
        self._window = timeout * WINDOW_TIMEOUTS
        self._since: float | None = None
        self._delay = _FIRST_DELAY

    def again(self, reason: str) -> bool:
        """After a failure: wait the next delay and return True, or False once the window is used up."""
        now = time.monotonic()
        if self._since is None:
            self._since = now
            click.echo(f"jw: {reason}; reconnecting for up to {self._window:g} s", err=True)
        elif now - self._since >= self._window:
            return False
        time.sleep(min(self._delay, max(0.0, self._since + self._window - now)))
        self._delay = min(self._delay * 2, _MAX_DELAY)
        return True

    def succeeded(self) -> None:
        """The server answered: a later outage gets a whole window again."""
        if self._since is not None:
            click.echo("jw: reconnected", err=True)
        self._since = None
        self._delay = _FIRST_DELAY

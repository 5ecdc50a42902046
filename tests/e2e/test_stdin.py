"""A job's stdin through the image: `jw run -i` pipes binary input and its end, `jw attach` writes later."""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.e2e.conftest import JobworkerServer


def test_stdin_reaches_a_sandboxed_job(server: JobworkerServer) -> None:
    data = os.urandom(1 << 20)
    proc = server.jw_popen("run", "-i", "--", "sh", "-c", "sha256sum; exit 3")
    out, err = proc.communicate(data, timeout=60)
    assert proc.returncode == 3, err
    assert out == f"{hashlib.sha256(data).hexdigest()}  -\n".encode()

    job_id = server.jw("start", "-i", "--", "sh", "-c", "read line; echo got:$line").stdout.strip()
    attach = server.jw_popen("attach", job_id)
    out, err = attach.communicate(b"hello\n", timeout=60)
    assert (attach.returncode, out) == (0, b"got:hello\n"), err
    # A reader may watch but not write.
    sleeper = server.jw("start", "-i", "--", "sleep", "30").stdout.strip()
    refused = server.jw_popen("attach", sleeper, identity="reader")
    _, err = refused.communicate(b"", timeout=60)
    assert refused.returncode == 5, err
    server.jw("stop", sleeper)

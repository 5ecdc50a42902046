"""`jw`: the command line client of jobworker.

Exit codes (also in `jw --help`):

    0    success
    1    other error (server error, server at capacity, `jw health`: not serving)
    2    usage or configuration error (bad option, unusable cert/key/CA file, invalid request)
    3    connection or TLS error (unreachable, timed out, certificate refused)
    4    job not found
    5    permission denied (PERMISSION_DENIED or UNAUTHENTICATED)
    6    failed precondition (e.g. stopping a job that has already ended)
    130  interrupted by Ctrl-C (`jw run`: detached, the job keeps running)

`jw run` exits with the job's own code: 128+N when signal N killed it (137 for an OOM kill).
"""

import os

# grpc logs failed handshakes at INFO on stderr; jw reports them itself, in one line.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from jobworker.cli._app import jw, main
from jobworker.cli._exit import ExitCode

__all__ = ["ExitCode", "jw", "main"]

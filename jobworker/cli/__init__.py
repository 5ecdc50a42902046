"""`jw`: the command line client of jobworker.

Exit codes: `_exit.EXIT_CODE_TABLE`, the one table `jw --help` prints and the README repeats.
"""

import os

# grpc logs failed handshakes and refused certificates on stderr (ERROR included); jw reports them
# itself, in one line.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from jobworker.cli._app import jw, main
from jobworker.cli._exit import ExitCode

__all__ = ["ExitCode", "jw", "main"]

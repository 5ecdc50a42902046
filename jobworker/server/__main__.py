"""`python -m jobworker.server`: the same as `jw-server`."""

from jobworker.server.main import main

main(prog_name="jw-server")

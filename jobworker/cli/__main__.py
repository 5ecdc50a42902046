"""`python -m jobworker.cli` runs `jw`."""

from jobworker.cli import main

main()

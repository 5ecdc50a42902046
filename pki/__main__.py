"""Allow `python -m pki` as an alias of `jw-pki`."""

from pki.cli import main

main(prog_name="jw-pki")

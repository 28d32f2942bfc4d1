"""`python -m mwp.cli ...` is the `mwp` command."""

from mwp.cli.run import main

main()

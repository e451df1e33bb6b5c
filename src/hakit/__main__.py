"""`python -m hakit` is the `hakit` command."""

from hakit.cli.main import main

main()

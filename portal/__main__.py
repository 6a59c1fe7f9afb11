"""`python -m portal` runs the CLI."""

from portal.cli import main

main()

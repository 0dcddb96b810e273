"""`python -m vlmedge.cli ...`: the same as the `vlmedge` command."""

from vlmedge.cli import main

main()

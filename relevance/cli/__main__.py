"""`python -m relevance.cli`: the `relevance` command line."""

from relevance.cli import main

main()

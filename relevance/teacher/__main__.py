"""`python -m relevance.teacher`: the entry point of every process a launcher starts (relevance.teacher.launch.main)."""

from relevance.teacher.launch import main

main()

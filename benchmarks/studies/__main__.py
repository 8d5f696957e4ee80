import sys

from benchmarks.studies import main

main(sys.argv[1:])

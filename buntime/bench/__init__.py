"""
The benchmark: C{python -m buntime.bench}.

Starts the runtime on a free loopback port with generated apps, drives the
SPEC §10 scenarios with C{wrk} (or, clearly labelled, a small Python load
generator when wrk is missing), runs a bare twisted.web baseline in the same
run, and prints requests/s, latency percentiles, errors, the ratio to the
baseline, pool metrics and memory.  A tool, not a test.
"""

# The docstring above is the command's --help.  Its parts: scenarios (what
# is measured, and the goals), apps (the generated apps, plugin and wrk
# scripts), servers (the runtime and baseline processes), load (wrk or the
# Python load generator), run (the rounds), proc (memory and CPU from /proc),
# report (the table, goals and JSON), instructions (the callgrind mode), cli.

from buntime.bench.cli import main

__all__ = ["main"]

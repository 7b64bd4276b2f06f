"""
C{python -m buntime.bench} and C{buntime-bench}: the options, and the run
they ask for.
"""

from __future__ import annotations

import argparse
import shutil
from typing import Any

from buntime.bench.apps import temporary_workdir
from buntime.bench.instructions import run_instructions
from buntime.bench.report import add_ratios, check_goals, print_report, save_report
from buntime.bench.run import loader, run_scenarios
from buntime.bench.scenarios import DEFAULT_SCENARIOS, EXTRA_CHECKS, SCENARIOS
from buntime.bench.servers import serve_baseline

DESCRIPTION = (
    "Start the runtime on a free loopback port with generated apps, drive each"
    " scenario with wrk (or, clearly labelled, a small Python load generator when"
    " wrk is missing), run a bare twisted.web baseline in the same run, and print"
    " requests/s, latency percentiles, errors, the ratio to the baseline, pool"
    " metrics and memory."
)


def parser() -> argparse.ArgumentParser:
    """The benchmark's command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m buntime.bench",
        description=DESCRIPTION,
        epilog="Scenarios, goals and the latest results: docs/performance.md.",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure the scenarios in turn this many times (the duration split among them); "
        "each reports its median round",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join([*DEFAULT_SCENARIOS, *EXTRA_CHECKS]),
        help="comma-separated: " + ", ".join([*SCENARIOS, *EXTRA_CHECKS]),
    )
    parser.add_argument(
        "--apps",
        type=int,
        default=200,
        help="how many small apps the many-apps scenarios serve (density starts up to 100)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--worker-mode", default="fork", choices=("fork", "spawn"))
    parser.add_argument(
        "--worker-cpus",
        default="all",
        help="the runtimes' RUNTIME_WORKER_CPUS: all (the default), others, or a CPU list",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warn", "error"))
    parser.add_argument("--python-load", action="store_true", help="use the Python generator")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under valgrind instead (needs valgrind and wrk)",
    )
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or the baseline server) as C{argv} asks: the exit status."""
    options_parser = parser()
    options = options_parser.parse_args(argv)
    if options.serve_baseline:
        serve_baseline()
        return 0
    wanted = [s.strip() for s in options.scenarios.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SCENARIOS and s not in EXTRA_CHECKS]
    if unknown:
        options_parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if options.instructions:
        return run_instructions(options_parser, wanted, options)
    use_wrk = shutil.which("wrk") is not None and not options.python_load
    if not use_wrk:
        print("bench: wrk not found (apt-get install wrk); using the Python load generator")

    report: dict[str, Any] = {
        "duration": options.duration,
        "rounds": max(1, options.rounds),
        "results": {},
    }
    with temporary_workdir() as (workdir, script, varied_script):
        load = loader(use_wrk, script, varied_script, options.apps)
        run_scenarios(report, wanted, options, workdir, load)
    add_ratios(report["results"], "rps", "ratio_to_baseline")
    check_goals(report["results"])
    print_report(report)
    save_report(report, options.json)
    return 0

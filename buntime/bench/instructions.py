"""
The C{--instructions} mode: instructions per request counted by callgrind,
steady whatever else the machine is doing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

from buntime.bench.apps import temporary_workdir, write_plugin_dir
from buntime.bench.load import run_wrk, time_to_first_byte
from buntime.bench.report import add_ratios, save_report
from buntime.bench.scenarios import PLUGIN_SCENARIOS, SCENARIOS, VARIED_SCENARIOS
from buntime.bench.servers import baseline, runtime

INSTRUCTION_SCENARIOS = (
    "baseline-noop",
    "baseline-echo",
    "baseline-varied",
    "warm-noop",
    "echo-1kb",
    "warm-noop-varied",
    "warm-noop-plugin",
    "warm-noop-gateway",
)
INSTRUCTION_CLIENTS = 10


def count_instructions(
    pid: int, output: str, load: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], int]:
    """
    Run C{load} while callgrind counts the instructions of process C{pid}
    (started with L{callgrind} and its C{output}); its result and the count.
    """
    control = ["callgrind_control"]
    subprocess.run([*control, "-i", "on", str(pid)], check=True, capture_output=True)
    result = load()
    subprocess.run([*control, "-i", "off", str(pid)], check=True, capture_output=True)
    subprocess.run([*control, "-d", str(pid)], check=True, capture_output=True)
    total = 0
    folder, name = os.path.split(output)
    for entry in os.listdir(folder):
        if entry.startswith(name):
            with open(os.path.join(folder, entry)) as handle:
                for line in handle:
                    if line.startswith(("summary:", "totals:")):
                        total = max(total, int(line.split()[1]))
    return result, total


def callgrind(output: str) -> list[str]:
    """The command prefix that runs a process under callgrind, counting nothing until told."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=no",
        "--instr-atstart=no",
        f"--callgrind-out-file={output}",
    ]


def measure_instructions(
    wanted: list[str],
    duration: float,
    log_level: str,
    workdir: str,
    script: str,
    varied_script: str,
) -> dict[str, Any]:
    """
    Instructions per request of the baseline and of the runtime (its own
    process only: workers are spawned, and run outside valgrind), counted
    by callgrind while wrk drives each scenario with 10 clients: the same
    for the same code, whatever else the machine does.
    """
    results: dict[str, Any] = {}

    def measured(pid: int, output: str, url: str, name: str) -> None:
        path, method, _, _ = SCENARIOS[name]
        if not name.startswith("baseline"):
            time_to_first_byte(url + path)  # warm it up
        chosen = varied_script if name in VARIED_SCENARIOS else script
        result, total = count_instructions(
            pid, output, lambda: run_wrk(url + path, method, INSTRUCTION_CLIENTS, duration, chosen)
        )
        if result["requests"]:
            result["instructions_per_request"] = round(total / result["requests"])
        results[name] = result

    baselines = [name for name in wanted if name.startswith("baseline")]
    if baselines:
        output = os.path.join(workdir, "baseline.callgrind")
        with baseline(callgrind(output)) as (url, pid):
            for name in baselines:
                measured(pid, output, url, name)
    plain = [n for n in wanted if not n.startswith("baseline") and n not in PLUGIN_SCENARIOS]
    if plain:
        output = os.path.join(workdir, "runtime.callgrind")
        with runtime(workdir, "spawn", log_level, callgrind(output), startup=300) as (url, pid):
            for name in plain:
                measured(pid, output, url, name)
    for name in (name for name in wanted if name in PLUGIN_SCENARIOS):
        output = os.path.join(workdir, f"{name}.callgrind")
        plugin_dir = write_plugin_dir(workdir, name)
        with runtime(
            workdir, "spawn", log_level, callgrind(output), startup=300, plugin_dir=plugin_dir
        ) as (url, pid):
            measured(pid, output, url, name)
    add_ratios(results, "instructions_per_request", "instructions_ratio")
    return results


def print_instructions(report: dict[str, Any]) -> None:
    """Print the instructions table of C{report}."""
    print(f"\nbuntime instructions per request ({report['duration']:g}s per scenario)\n")
    header = f"{'scenario':<16} {'requests':>9} {'k instr/request':>16} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for name, result in report["results"].items():
        per = result.get("instructions_per_request")
        print(
            f"{name:<16} {result['requests']:>9} "
            f"{'' if per is None else f'{per / 1000:.1f}':>16} "
            f"{result.get('instructions_ratio', ''):>6}"
        )
    print("\ncounted by callgrind in the runtime's own process (workers spawned, not counted)")


def run_instructions(parser: Any, wanted: list[str], options: Any) -> int:
    """The C{--instructions} run of the C{wanted} scenarios: the exit status."""
    if options.scenarios == parser.get_default("scenarios"):
        wanted = list(INSTRUCTION_SCENARIOS)
    unfit = [name for name in wanted if name not in INSTRUCTION_SCENARIOS]
    if unfit:
        parser.error(f"--instructions measures {', '.join(INSTRUCTION_SCENARIOS)}; not {unfit}")
    missing = [tool for tool in ("valgrind", "callgrind_control", "wrk") if not shutil.which(tool)]
    if missing:
        parser.error(f"--instructions needs {', '.join(missing)} (apt-get install valgrind wrk)")
    report: dict[str, Any] = {"duration": options.duration}
    with temporary_workdir() as (workdir, script, varied_script):
        report["results"] = measure_instructions(
            wanted, options.duration, options.log_level, workdir, script, varied_script
        )
    print_instructions(report)
    save_report(report, options.json)
    return 0

"""
A one-second smoke run of the benchmark (``python -m buntime.bench``): it
starts, drives each scenario, and writes a well-formed report.  Speed itself
is never asserted here; that is the benchmark's job, not a test's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def bench(tmp_path, *options: str, timeout: float = 180) -> tuple[str, dict]:
    """Run C{python -m buntime.bench} with C{options}: its output and its JSON report."""
    report_path = tmp_path / "report.json"
    finished = subprocess.run(
        [sys.executable, "-m", "buntime.bench", *options, "--json", str(report_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return finished.stdout, json.loads(report_path.read_text())


def test_benchmark_smoke(tmp_path):
    loads = (
        "baseline-noop",
        "baseline-varied",
        "warm-noop",
        "warm-noop-varied",
        "warm-noop-plugin",
        "warm-noop-gateway",
        "echo-1kb",
        "ephemeral-noop",
    )
    scenarios = ",".join([*loads, "cold-start"])
    output, report = bench(tmp_path, "--duration", "2", "--rounds", "2", "--scenarios", scenarios)
    assert "buntime benchmark" in output
    results = report["results"]
    assert set(results) == set(scenarios.split(","))
    for name in loads:
        result = results[name]
        assert result["requests"] > 0, (name, result)
        assert result["errors"] == 0 and result["non2xx"] == 0, (name, result)
        assert {"rps", "p50_ms", "p95_ms", "p99_ms", "generator"} <= set(result)
    assert results["warm-noop"]["ratio_to_baseline"] > 0
    assert len(results["warm-noop"]["rps_rounds"]) == 2  # measured in turn with the others
    assert results["warm-noop-plugin"]["hooks_ran"] is True  # its responses had x-bench: 1
    assert results["warm-noop-gateway"]["hooks_ran"] is True  # ... and the gateway's headers
    compared = {
        "warm-noop-plugin": ["warm-noop"],
        "warm-noop-gateway": ["warm-noop"],
        "warm-noop-varied": ["warm-noop", "baseline-varied"],
    }
    for name, others in compared.items():
        goals = results[name]["goals"]
        assert [goal["compared_with"] for goal in goals] == others, (name, goals)
        assert all(goal["ratio"] > 0 and goal["met"] in (True, False) for goal in goals), goals
    assert "goal ≥ 0.7x baseline-varied" in output  # printed beside the result
    assert "goal ≥ 0.85x warm-noop" in output
    assert results["cold-start"]["ttfb_ms"] > 0
    assert report["runtime_rss_mb"] > 0
    assert report["pool"]["totalRequests"] > 0  # pool metrics from the metrics plugin


def test_many_apps_smoke(tmp_path):
    scenarios = "warm-noop,many-apps-warm,many-apps-churn,density,cold-start,ephemeral-noop"
    output, report = bench(
        tmp_path, *("--apps", "8", "--duration", "1", "--rounds", "1", "--scenarios", scenarios)
    )
    results = report["results"]
    assert set(results) == set(scenarios.split(","))
    for name in ("many-apps-warm", "many-apps-churn"):
        result = results[name]
        assert result["requests"] > 0, (name, result)
        assert {"rps", "p50_ms", "p95_ms", "p99_ms", "errors", "non2xx"} <= set(result)
        assert {"pool_hit_rate", "pool_miss_rate", "cold_starts", "cold_starts_per_s"} <= set(
            result
        )
        assert result["goals"][0]["compared_with"] == "warm-noop"
        assert result["goals"][0]["ratio"] > 0
    warm, churn = results["many-apps-warm"], results["many-apps-churn"]
    assert warm["errors"] == 0 and warm["non2xx"] == 0, warm
    assert warm["cold_starts"] == 0 and warm["pool_hit_rate"] == 100.0  # all warmed up first
    assert churn["cold_starts"] > 0 and churn["evictions"] > 0  # a pool of 2 for 8 apps
    assert {goal.get("measure") for goal in churn["goals"]} >= {"errors", "non2xx"}
    assert "goal p99_ms ≤ 20" in output and "pool_hit_rate" in output
    dense = results["density"]
    assert dense["workers"] == 8  # one idle worker per app
    assert 0 < dense["private_per_worker_mb"] <= dense["pss_per_worker_mb"]
    assert dense["total_pss_mb"] > dense["runtime_pss_mb"] > 0
    assert dense["goals"][0]["measure"] == "pss_per_worker_mb"
    assert results["cold-start"]["ttfb_ms"] > 0 and len(results["cold-start"]["ttfb_each_ms"]) == 5
    assert isinstance(results["cold-start"]["quiet"], bool)
    assert [goal["measure"] for goal in results["ephemeral-noop"]["goals"]] == ["rps", "p95_ms"]


def test_zipf_paths_favour_the_first_apps():
    from itertools import islice

    from buntime.bench.many import zipf_paths

    drawn = list(islice(zipf_paths(200), 20000))
    assert drawn == list(islice(zipf_paths(200), 20000))  # seeded
    share = drawn.count("/app-000/") / len(drawn)
    assert 0.19 < share < 0.24  # 1 / sum(1 / k ** 1.1 for k in 1..200) = 0.21
    assert len(set(drawn)) > 150


@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("valgrind", "callgrind_control", "wrk")),
    reason="needs valgrind and wrk (.ci/run installs them)",
)
def test_instructions_smoke(tmp_path):
    output, report = bench(
        tmp_path,
        *("--instructions", "--duration", "1", "--scenarios", "baseline-noop,warm-noop"),
        timeout=600,
    )
    assert "instructions per request" in output
    results = report["results"]
    assert set(results) == {"baseline-noop", "warm-noop"}
    for result in results.values():
        assert result["requests"] > 0 and result["errors"] == 0 and result["non2xx"] == 0
        assert result["instructions_per_request"] > 1000  # a request costs at least that
    assert results["warm-noop"]["instructions_ratio"] > 0


def test_instructions_refuses_scenarios_it_cannot_count(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-m", "buntime.bench", "--instructions", "--scenarios", "slow-50ms"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 2 and "--instructions measures" in finished.stderr


def test_help_is_plain_text_about_this_repository():
    from buntime.bench.cli import parser

    text = parser().format_help()
    for markup in ("C{", "L{", "I{", "B{", "U{", "@param", "SPEC", "STYLE"):
        assert markup not in text
    assert "docs/performance.md" in text
    root = Path(__file__).resolve().parent.parent
    for document in re.findall(r"[\w./-]+\.(?:md|txt|rst|yaml)\b", text):
        assert (root / document).is_file(), f"--help names {document}, which is not in the repo"


def test_the_cpu_of_workers_that_ended_is_counted():
    # An ephemeral or evicted worker ends during a scenario: its CPU time
    # must still count (in the process that waited for it), or "wk µs" of
    # churn and ephemeral scenarios comes out too small, even negative.
    from buntime.bench.proc import cpu_split

    script = (
        "import subprocess, sys\n"
        "subprocess.run([sys.executable, '-c', 'x = 0\\nfor i in range(4_000_000): x += i'])\n"
        "print('ended', flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        before = cpu_split(parent.pid)[1]  # the busy child may not even have started
        assert parent.stdout.readline() == "ended\n"  # the child ended and was waited for
        after = cpu_split(parent.pid)[1]
        assert after - before >= 0.05  # four million additions take longer than that
    finally:
        parent.stdin.close()
        parent.wait()


def test_cold_starts_wait_until_the_machine_is_quiet_but_not_for_ever():
    """
    The many-apps runtimes start hundreds of workers just before cold-start
    is measured: it waits for two quiet windows in a row, and gives up (and
    says so) when the machine never gets quiet.
    """
    from buntime.bench.proc import wait_until_quiet

    def machine(busy_fractions):
        now = [0.0]
        ticks = [0, 0]
        fractions = iter(busy_fractions)

        def sample():
            return tuple(ticks)

        def sleep(seconds):
            now[0] += seconds
            ticks[0] += int(100 * next(fractions))
            ticks[1] += 100

        return sample, sleep, lambda: now[0]

    sample, sleep, clock = machine([0.9, 0.9, 0.1, 0.8, 0.05, 0.1, 0.9])
    assert wait_until_quiet(5, 0.25, 0.15, sample, sleep, clock)
    assert clock() == 1.5  # after the 5th and 6th windows, the first two quiet ones in a row
    sample, sleep, clock = machine([0.9] * 100)
    assert not wait_until_quiet(5, 0.25, 0.15, sample, sleep, clock)
    assert clock() == 5.0


def test_cpu_jiffies_reads_the_machines_busy_and_total_time(tmp_path):
    from buntime.bench.proc import cpu_jiffies

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 800 20 0 5 0 0 0\ncpu0 1 2 3 4\n")
    assert cpu_jiffies(str(stat)) == (160, 980)

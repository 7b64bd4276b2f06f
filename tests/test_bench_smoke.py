"""
A one-second smoke run of the benchmark (``python -m buntime.bench``): it
starts, drives each scenario, and writes a well-formed report.  Speed itself
is never asserted here; that is the benchmark's job, not a test's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_benchmark_smoke(tmp_path):
    report_path = tmp_path / "report.json"
    scenarios = "baseline-noop,warm-noop,echo-1kb,ephemeral-noop,cold-start"
    finished = subprocess.run(
        [
            *(sys.executable, "-m", "buntime.bench", "--duration", "1"),
            *("--scenarios", scenarios, "--json", str(report_path)),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "buntime benchmark" in finished.stdout
    report = json.loads(report_path.read_text())
    results = report["results"]
    assert set(results) == set(scenarios.split(","))
    for name in ("baseline-noop", "warm-noop", "echo-1kb", "ephemeral-noop"):
        result = results[name]
        assert result["requests"] > 0, (name, result)
        assert result["errors"] == 0 and result["non2xx"] == 0, (name, result)
        assert {"rps", "p50_ms", "p95_ms", "p99_ms", "generator"} <= set(result)
    assert results["warm-noop"]["ratio_to_baseline"] > 0
    assert results["cold-start"]["ttfb_ms"] > 0
    assert report["runtime_rss_mb"] > 0
    assert report["pool"]["totalRequests"] > 0  # pool metrics from the metrics plugin

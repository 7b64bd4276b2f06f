"""
The benchmark's report: the median round of each scenario, ratios to the
baselines, the goals, the printed table and the JSON file.
"""

from __future__ import annotations

import json
from typing import Any

from buntime.bench.scenarios import GOALS, LIMITS, SCENARIOS


def median_round(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The sample of median req/s (the lower of the middle two), with every round's req/s."""
    ordered = sorted(samples, key=lambda sample: sample.get("rps", 0.0))
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if len(samples) > 1:
        chosen["rps_rounds"] = [sample.get("rps") for sample in samples]
    return chosen


def _ratio(result: dict[str, Any], other: dict[str, Any] | None, measure: str) -> float | None:
    """C{result}'s C{measure} divided by C{other}'s, C{None} if either lacks it."""
    if other and other.get(measure) and measure in result:
        return round(result[measure] / other[measure], 2)
    return None


def add_ratios(results: dict[str, Any], measure: str, ratio: str) -> None:
    """Each scenario's C{measure} divided by its baseline's, as C{ratio}."""
    for name, result in results.items():
        base = results.get(SCENARIOS.get(name, (None, None, None, None))[3] or "")
        if (value := _ratio(result, base, measure)) is not None:
            result[ratio] = value


def check_goals(results: dict[str, Any]) -> None:
    """
    Each scenario's req/s against those its L{GOALS} name, as C{goals}: a
    list of C{{"compared_with", "least", "ratio", "met"}} (C{ratio} and
    C{met} are C{None} when the other scenario was not measured); then its
    L{LIMITS}: C{{"measure", "limit", "at", "value", "met"}} (C{at} is
    C{"at most"} or C{"at least"}).
    """
    for name, goals in GOALS.items():
        if name not in results:
            continue
        results[name]["goals"] = []
        for other, least in goals:
            ratio = _ratio(results[name], results.get(other), "rps")
            met = None if ratio is None else ratio >= least
            results[name]["goals"].append(
                {"compared_with": other, "least": least, "ratio": ratio, "met": met}
            )
    for name, limits in LIMITS.items():
        if name not in results:
            continue
        for measure, at, limit in limits:
            value = results[name].get(measure)
            met = None if value is None else (value <= limit if at == "at most" else value >= limit)
            results[name].setdefault("goals", []).append(
                {"measure": measure, "at": at, "limit": limit, "value": value, "met": met}
            )


def _goals_text(result: dict[str, Any]) -> str:
    """The goals of a scenario's result and whether it met them, for the report."""
    verdicts = {True: "met", False: "NOT MET", None: "not measured"}
    texts = []
    for goal in result.get("goals", ()):
        if "compared_with" in goal:
            texts.append(
                f"goal ≥ {goal['least']}x {goal['compared_with']}: "
                + ("" if goal["ratio"] is None else f"{goal['ratio']}x ")
                + verdicts[goal["met"]]
            )
        else:
            sign = "≤" if goal["at"] == "at most" else "≥"
            texts.append(
                f"goal {goal['measure']} {sign} {goal['limit']:g}: "
                + ("" if goal["value"] is None else f"{goal['value']} ")
                + verdicts[goal["met"]]
            )
    return "; ".join(texts)


def _pool_part(result: dict[str, Any]) -> dict[str, Any]:
    """What a many-apps scenario's pool did, for the report."""
    names = ("pool_hit_rate", "pool_miss_rate", "cold_starts", "cold_starts_per_s", "evictions")
    return {name: result[name] for name in names if name in result}


def save_report(report: dict[str, Any], path: str | None) -> None:
    """Write C{report} as JSON to C{path}, if given (C{--json})."""
    if path:
        with open(path, "w") as handle:
            json.dump(report, handle, indent=2)


def print_report(report: dict[str, Any]) -> None:
    """Print C{report} as a table, then the load generator, memory and pool."""
    rounds = report.get("rounds", 1)
    print(
        f"\nbuntime benchmark ({report['duration']:g}s per scenario, in {rounds} round(s): "
        "req/s of the median round)\n"
    )
    columns = (
        ("req/s", 9),
        ("p50 ms", 8),
        ("p95 ms", 8),
        ("p99 ms", 8),
        ("errors", 7),
        ("ratio", 6),
        ("rt µs", 7),
        ("wk µs", 7),
    )
    header = f"{'scenario':<16} " + " ".join(f"{title:>{width}}" for title, width in columns)
    print(header)
    print("-" * len(header))
    for name, result in report["results"].items():
        if "rps" in result:
            print(
                f"{name:<16} {result['rps']:>9.1f} {result['p50_ms']:>8.2f} "
                f"{result['p95_ms']:>8.2f} {result['p99_ms']:>8.2f} "
                f"{result['errors'] + result['non2xx']:>7} "
                f"{result.get('ratio_to_baseline', ''):>6} "
                f"{result.get('runtime_cpu_us', ''):>7} {result.get('workers_cpu_us', ''):>7}"
                f"  {_goals_text(result)}".rstrip()
            )
            if "pool_hit_rate" in result:
                print(f"{'':<16} pool: {json.dumps(_pool_part(result))}")
        else:
            shown = {k: v for k, v in result.items() if k != "goals"}
            print(f"{name:<16} {json.dumps(shown)}  {_goals_text(result)}".rstrip())
    generators = {r.get("generator") for r in report["results"].values() if "generator" in r}
    print(f"\nload generator: {', '.join(sorted(g for g in generators if g))}")
    print(f"runtime RSS: {report.get('runtime_rss_mb')} MB; workers: {report.get('worker_rss_mb')}")
    if "pool" in report:
        print(f"pool: {json.dumps(report['pool'])}")

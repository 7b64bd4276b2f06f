"""
A run of the benchmark's load scenarios: every server up at once, the
scenarios measured in turn, round after round, so that a scenario and its
baseline meet the same moments of a busy machine; each reports its median
round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from typing import Any

from buntime.bench.apps import write_plugin_dir, write_proxy_plugin
from buntime.bench.load import python_load, run_wrk, stream_rss, time_to_first_byte
from buntime.bench.many import (
    app_name,
    density,
    pool_change,
    pool_counts,
    write_many_apps,
    zipf_paths,
)
from buntime.bench.proc import cpu_split, descendants, rss_mb, wait_until_quiet
from buntime.bench.report import median_round
from buntime.bench.scenarios import (
    COLD_APPS,
    DENSITY_APPS,
    MANY_SCENARIOS,
    PLUGIN_PROOF,
    PLUGIN_SCENARIOS,
    PROXY_SCENARIOS,
    SCENARIOS,
    VARIED_SCENARIOS,
)
from buntime.bench.servers import baseline, fetch_header, fetch_json, fetch_status, runtime

Load = Callable[[str, str, float], dict[str, Any]]
"""Drive a scenario (by name) at a server's base URL for some seconds: its result."""


def options_runtime(
    options: argparse.Namespace, workdir: str, **kwargs: Any
) -> AbstractContextManager[tuple[str, int]]:
    """L{runtime} in the worker mode, log level and CPUs C{options} give."""
    return runtime(
        workdir,
        options.worker_mode,
        options.log_level,
        worker_cpus=options.worker_cpus,
        **kwargs,
    )


def loader(use_wrk: bool, script: str, varied_script: str, apps: int = 200) -> Load:
    """
    The L{Load} of this run: wrk with C{script} (C{varied_script} for
    L{VARIED_SCENARIOS}, C{zipf.lua} beside them over C{apps} apps for
    L{MANY_SCENARIOS}), or the Python load generator.
    """

    def load(url: str, name: str, seconds: float) -> dict[str, Any]:
        """Drive scenario C{name} at C{url} (the server's base) for C{seconds}."""
        path, method, clients, _ = SCENARIOS[name]
        varied = name in VARIED_SCENARIOS
        many = name in MANY_SCENARIOS
        if use_wrk and many:
            zipf = os.path.join(os.path.dirname(script), "zipf.lua")
            return run_wrk(url + path, method, clients, seconds, zipf, {"BENCH_APPS": str(apps)})
        if use_wrk:
            chosen = varied_script if varied else script
            return run_wrk(url + path, method, clients, seconds, chosen)
        paths = zipf_paths(apps) if many else None
        return asyncio.run(python_load(url + path, method, clients, seconds, varied, paths))

    return load


def measure(
    load: Load, url: str, pid: int, name: str, seconds: float, number: int
) -> dict[str, Any]:
    """
    Drive runtime scenario C{name} in round C{number}, warm (but
    ephemeral-noop), timing the CPU of the runtime C{pid} and its workers.
    """
    many = name in MANY_SCENARIOS  # warmed up as they start (_serve_many)
    if name != "ephemeral-noop" and not many and number == 0:
        time_to_first_byte(url + SCENARIOS[name][0])  # warm it up
    counts = pool_counts(fetch_json, url) if many else None
    before = cpu_split(pid)
    began = time.monotonic()
    result = load(url, name, seconds)
    elapsed = time.monotonic() - began
    after = cpu_split(pid)
    if counts is not None:
        result.update(pool_change(counts, pool_counts(fetch_json, url), elapsed))
    if result.get("requests"):
        # CPU time per request: steadier than req/s on a busy machine
        result["runtime_cpu_us"] = round((after[0] - before[0]) * 1e6 / result["requests"], 1)
        result["workers_cpu_us"] = round((after[1] - before[1]) * 1e6 / result["requests"], 1)
    return result


def run_scenarios(
    report: dict[str, Any],
    wanted: list[str],
    options: argparse.Namespace,
    workdir: str,
    load: Load,
) -> None:
    """
    Measure the scenarios and checks of C{wanted} into C{report}, with the
    runtime's memory and its pool metrics.
    """
    loads = [name for name in wanted if name in SCENARIOS]
    with ExitStack() as servers:
        base = servers.enter_context(baseline())
        url, pid = servers.enter_context(options_runtime(options, workdir))
        where = {name: (url, pid) for name in loads}
        hooked = [name for name in wanted if name in PLUGIN_SCENARIOS]
        if hooked:
            _serve_hooked(servers, hooked, options, workdir, where, report)
        proxied = [name for name in wanted if name in PROXY_SCENARIOS]
        if proxied:
            _serve_proxied(servers, proxied, options, workdir, base[0], where, report)
        many = [name for name in wanted if name in MANY_SCENARIOS or name == "density"]
        if many:
            _serve_many(servers, many, options, workdir, where, report)
        loads = [name for name in loads if name in where]
        if "cold-start" in wanted:
            # the many-apps runtimes just started hundreds of workers: let them settle
            quiet = wait_until_quiet()
            firsts = [time_to_first_byte(f"{url}/cold-{n}/") for n in range(COLD_APPS)]
            report["results"]["cold-start"] = {
                "ttfb_ms": statistics.median(firsts),
                "ttfb_each_ms": firsts,
                "quiet": quiet,
            }
        samples = _rounds(loads, where, base, options, load)
        for name in loads:
            report["results"][name] = median_round(samples[name])
            if name in hooked:
                report["results"][name]["hooks_ran"] = True
        if "stream-100mb" in wanted:
            time_to_first_byte(url + "/noop-asgi/")
            report["results"]["stream-100mb"] = stream_rss(url + "/stream/", pid)
        _memory_and_pool(report, url, pid)


def _serve_hooked(
    servers: ExitStack,
    hooked: list[str],
    options: argparse.Namespace,
    workdir: str,
    where: dict[str, tuple[str, int]],
    report: dict[str, Any],
) -> None:
    """
    Start a runtime with its plugin dir for each of the C{hooked} scenarios,
    and send each there in C{where}; one whose hooks do not run is reported
    as such and left out of C{where}.
    """
    for name in hooked:
        plugin_dir = write_plugin_dir(workdir, name)
        hooked_at = servers.enter_context(options_runtime(options, workdir, plugin_dir=plugin_dir))
        # Proof that the hooks run, before any load: a header on_response adds.
        header, value = PLUGIN_PROOF[name]
        if fetch_header(hooked_at[0] + SCENARIOS[name][0], header) == value:
            where[name] = hooked_at
        else:
            del where[name]
            report["results"][name] = {
                "hooks_ran": False,
                "error": f"no {header}: {value} on a response: the plugin's hooks did not run",
            }


def _serve_proxied(
    servers: ExitStack,
    proxied: list[str],
    options: argparse.Namespace,
    workdir: str,
    upstream: str,
    where: dict[str, tuple[str, int]],
    report: dict[str, Any],
) -> None:
    """
    Start a runtime with the built-in proxy in front of C{upstream} (the
    baseline) for the C{proxied} scenarios; one whose request does not come
    back through the proxy is reported as such and left out of C{where}.
    """
    plugin_dir = write_proxy_plugin(workdir, upstream)
    proxy_at = servers.enter_context(options_runtime(options, workdir, plugin_dir=plugin_dir))
    for name in proxied:
        if fetch_status(proxy_at[0] + SCENARIOS[name][0]) == 200:
            where[name] = proxy_at
        else:
            del where[name]
            report["results"][name] = {"error": "the proxy did not answer from the baseline"}


def _serve_many(
    servers: ExitStack,
    many: list[str],
    options: argparse.Namespace,
    workdir: str,
    where: dict[str, tuple[str, int]],
    report: dict[str, Any],
) -> None:
    """
    Generate C{options.apps} small apps; measure C{density} in a runtime of
    its own (stopped after), and start a runtime for each of the
    L{MANY_SCENARIOS} in C{many}, warmed up: every app for many-apps-warm
    (its pool holds them all), the most popular quarter for many-apps-churn
    (a pool of that size).
    """
    count = max(1, options.apps)
    apps = write_many_apps(workdir, count)
    mode, level, cpus = options.worker_mode, options.log_level, options.worker_cpus
    if "density" in many:
        idle = min(DENSITY_APPS, count)
        with runtime(workdir, mode, level, pool_size=idle + 10, apps=apps, worker_cpus=cpus) as (
            url,
            pid,
        ):
            report["results"]["density"] = density(url, pid, idle, time_to_first_byte, fetch_json)
    sizes = {"many-apps-warm": count + 10, "many-apps-churn": max(1, count // 4)}
    for name in many:
        if name not in MANY_SCENARIOS:
            continue
        size = sizes[name]
        url, pid = servers.enter_context(
            runtime(workdir, mode, level, pool_size=size, apps=apps, worker_cpus=cpus)
        )
        for number in range(min(size, count)):
            time_to_first_byte(f"{url}/{app_name(number)}/")
        where[name] = (url, pid)


def _rounds(
    loads: list[str],
    where: dict[str, tuple[str, int]],
    base: tuple[str, int],
    options: argparse.Namespace,
    load: Load,
) -> dict[str, list[dict[str, Any]]]:
    """Every scenario of C{loads} in turn, C{options.rounds} times: each one's results."""
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in loads}
    rounds = max(1, options.rounds)
    for number in range(rounds):
        for name in loads:
            if name.startswith("baseline"):
                result = load(base[0], name, options.duration / rounds)
                result["rss_mb"] = rss_mb(base[1])
            else:
                result = measure(load, *where[name], name, options.duration / rounds, number)
            samples[name].append(result)
    return samples


def _memory_and_pool(report: dict[str, Any], url: str, pid: int) -> None:
    """The resident memory of the runtime C{pid} and its workers, and its pool metrics."""
    report["runtime_rss_mb"] = rss_mb(pid)
    report["worker_rss_mb"] = {
        str(child): rss_mb(child) for child in descendants(pid) if rss_mb(child)
    }
    metrics = fetch_json(url + "/metrics/api/")
    if metrics is not None:
        report["pool"] = metrics.get("pool", metrics)

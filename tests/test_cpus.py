"""
C{RUNTIME_WORKER_CPUS} (L{buntime.cpus}): CPU lists, the runtime's and its
workers' CPUs, a child taking its own, and a real runtime placed so.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from e2e_apps import write_app

from buntime.config import ConfigError, load_config
from buntime.cpus import (
    CPUS_VARIABLE,
    CpuPlan,
    check_setting,
    child_env,
    cpu_list,
    parse_cpu_list,
    plan,
    take_cpus,
)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0", {0}), ("0-3,5", {0, 1, 2, 3, 5}), ("1, 3-4", {1, 3, 4}), ("2-2", {2})],
)
def test_a_cpu_list_reads_as_taskset_writes_it(text, cpus):
    assert parse_cpu_list(text) == cpus
    assert parse_cpu_list(cpu_list(frozenset(cpus))) == cpus


def test_a_cpu_list_is_written_in_ranges():
    assert cpu_list(frozenset({0, 1, 2, 3, 5, 7, 8})) == "0-3,5,7-8"
    assert cpu_list(frozenset()) == ""


@pytest.mark.parametrize("text", ["", "a", "3-1", "1,,2", "-1", "1-", "0x1", "1;2"])
def test_what_is_not_a_cpu_list_is_refused(text):
    with pytest.raises(ValueError):
        parse_cpu_list(text)


def test_the_setting_is_all_others_or_a_list():
    assert [check_setting(v) for v in ("", "ALL", " others ", "1-3")] == [
        "all",
        "all",
        "others",
        "1-3",
    ]
    with pytest.raises(ValueError):
        check_setting("some")


def test_a_bad_setting_stops_the_runtime_naming_the_variable():
    with pytest.raises(ConfigError, match="RUNTIME_WORKER_CPUS: 'some' is not a CPU list"):
        load_config({}, {"RUNTIME_WORKER_DIRS": "/tmp", "RUNTIME_WORKER_CPUS": "some"})


@pytest.mark.parametrize(
    ("setting", "allowed", "placed"),
    [
        ("all", {0, 1}, CpuPlan(None, None)),
        ("others", {0, 1, 2, 3}, CpuPlan(frozenset({0}), frozenset({1, 2, 3}))),
        ("others", {2, 5}, CpuPlan(frozenset({2}), frozenset({5}))),
        ("others", {3}, CpuPlan(None, None)),  # one CPU: shared, as without the setting
        ("1", {0, 1, 2}, CpuPlan(frozenset({0, 2}), frozenset({1}))),
        ("0-1", {0, 1}, CpuPlan(None, frozenset({0, 1}))),  # no CPU left: the runtime's stay
        ("1-9", {0, 1, 2}, CpuPlan(frozenset({0}), frozenset({1, 2}))),
    ],
)
def test_the_runtime_and_its_workers_get_their_cpus(setting, allowed, placed):
    assert plan(setting, frozenset(allowed)) == placed


def test_a_list_of_cpus_the_process_may_not_use_is_refused():
    with pytest.raises(ValueError, match="none of the CPUs 7 is one this process may use"):
        plan("7", frozenset({0, 1}))


def test_a_child_takes_its_cpus_and_the_variable_goes():
    before = os.sched_getaffinity(0)
    mine = min(before)
    environ = {**child_env(frozenset({mine})), "OTHER": "x"}
    assert environ[CPUS_VARIABLE] == str(mine)
    try:
        take_cpus(environ)
        assert os.sched_getaffinity(0) == {mine}
    finally:
        os.sched_setaffinity(0, before)
    assert environ == {"OTHER": "x"}
    take_cpus({CPUS_VARIABLE: "4096"})  # not on this machine: left alone, no error
    assert os.sched_getaffinity(0) == before
    assert child_env(None) == {}


def allowed_cpus(pid: int) -> frozenset[int]:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Cpus_allowed_list:"):
                return parse_cpu_list(line.split(":", 1)[1].strip())
    raise AssertionError("no Cpus_allowed_list")


def descendants(pid: int) -> list[int]:
    found = []
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        for child in map(int, children.read().split()):
            found += [child, *descendants(child)]
    return found


@pytest.mark.e2e
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to split")
@pytest_twisted.ensureDeferred
async def test_with_others_the_runtime_keeps_a_cpu_and_its_workers_run_on_the_rest(
    runtimes, tmp_path
):
    write_app(tmp_path, "hello", "1.0.0", files={"app.py": 'routes = {"/": "hi"}\n'})
    proc = await runtimes.start(worker_dirs=[str(tmp_path)], env={"RUNTIME_WORKER_CPUS": "others"})
    response = await proc.get("/hello/")
    assert await response.text() == "hi"
    allowed = frozenset(os.sched_getaffinity(0))
    kept, rest = frozenset({min(allowed)}), allowed - {min(allowed)}
    [line] = proc.messages("buntime:cpus")
    assert line["workers"] == cpu_list(rest)
    assert allowed_cpus(proc.pid) == kept
    children = descendants(proc.pid)  # the template, its spare and the worker
    assert len(children) >= 2
    assert {pid: allowed_cpus(pid) for pid in children} == {pid: rest for pid in children}

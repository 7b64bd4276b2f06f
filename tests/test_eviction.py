"""The pool's frequency-aware eviction (L{buntime.pool.eviction}) on a seeded Zipf stream."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import OrderedDict

from buntime.pool.eviction import COUNTER_MAX, FrequencyEviction, FrequencySketch

APPS, CAPACITY, SKEW = 200, 50, 1.1


def zipf_stream(count: int, seed: int = 1) -> list[str]:
    """C{count} app keys, app k (from 1) drawn in proportion to 1 / k ** SKEW."""
    keys = [f"/apps/app-{number:03d}@1.0.0" for number in range(APPS)]
    weights = [1 / k**SKEW for k in range(1, APPS + 1)]
    return random.Random(seed).choices(keys, weights, k=count)


def miss_rate(stream: list[str], policy: FrequencyEviction | None) -> float:
    """The share of C{stream} finding its key not resident: C{policy}, or plain LRU."""
    resident: OrderedDict[str, None] = OrderedDict()
    misses = 0
    for key in stream:
        if policy is not None:
            policy.record(key)
        if key in resident:
            resident.move_to_end(key)
            continue
        misses += 1
        if len(resident) >= CAPACITY:
            victim = policy.victim(list(resident)) if policy else next(iter(resident))
            assert victim is not None and victim != key
            del resident[victim]
        resident[key] = None
        if policy is not None:
            policy.admitted(key)
    return misses / len(stream)


def test_misses_well_under_lru_and_near_the_popular_set_floor():
    weights = [1 / k**SKEW for k in range(1, APPS + 1)]
    floor = 1 - sum(weights[:CAPACITY]) / sum(weights)  # keeping the 50 most popular: 18.5 %
    stream = zipf_stream(100_000)
    lru = miss_rate(stream, None)
    frequent = miss_rate(stream, FrequencyEviction(CAPACITY))
    assert 0.25 < lru < 0.29  # ~26.8 %
    assert frequent < lru - 0.05
    assert frequent < floor + 0.025  # ~19.6 %


def test_a_burst_of_new_keys_does_not_retire_the_popular_ones():
    """
    Run under one string-hash seed: the sketch takes its counters from
    C{hash(key)}, which Python seeds anew in each process, and with a pool
    of four (a sketch of 32 counters a row) about one seed in a hundred
    collides a scanned key with the popular ones in every row.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join([here, os.path.dirname(here)])
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": path}
    code = "import test_eviction; test_eviction.a_burst_of_new_keys()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def a_burst_of_new_keys() -> None:
    """Twenty keys asked for once each do not retire the four asked for often."""
    policy = FrequencyEviction(4)
    resident = ["a", "b", "c", "d"]  # least recently used first
    for key in resident:
        policy.admitted(key)
    for _ in range(10):
        for key in resident:
            policy.record(key)
    for number in range(20):  # a scan: each asked for once
        key = f"scan-{number}"
        policy.record(key)
        victim = policy.victim(resident)
        resident.remove(victim)
        resident.append(key)
        policy.admitted(key)
    # One of the four made room for the first scanned; LRU would hold the last four scanned.
    assert resident[:3] == ["b", "c", "d"]


def test_the_least_recently_used_of_equals_goes_and_the_window_is_kept():
    policy = FrequencyEviction(100, window=0.02)  # a window of 2
    assert policy.victim([]) is None
    for key in ("older", "old", "new"):
        policy.record(key)
    policy.admitted("new")
    assert policy.victim(["older", "old", "new"]) == "older"
    assert policy.victim(["new"]) == "new"  # alone: the window is no shelter


def test_apps_still_starting_are_spared_while_others_can_go():
    policy = FrequencyEviction(20)  # a window of 1
    for _ in range(5):
        policy.record("hot")
    policy.record("cold")
    policy.admitted("new")
    residents = ["hot", "cold", "new"]
    assert policy.victim(residents) == "cold"  # asked for less often
    assert policy.victim(residents, spare={"cold"}) == "hot"  # but still starting
    assert policy.victim(residents, spare={"hot", "cold"}) == "new"
    assert policy.victim(residents, spare=set(residents)) == "hot"  # none can be spared


def test_sketch_counts_saturate_and_halve():
    sketch = FrequencySketch(width=64, sample=1000)
    for _ in range(40):
        sketch.add("hot")
    sketch.add("cold")
    assert sketch.estimate("hot") == COUNTER_MAX
    assert sketch.estimate("cold") >= 1
    assert sketch.estimate("never") <= 1  # a collision at most, with 64 counters a row
    for _ in range(1000 - 41):
        sketch.add("other")
    assert sketch.estimate("hot") == COUNTER_MAX // 2  # aged: halved at the 1000th add

"""bench/report.py's capacity rules: what bench/results/load.md claims a server sustains."""

from __future__ import annotations

from functools import partial

from bench.report import CLEAN_STEAL_PCT, capacity, capacity_despite_steal, sustained

SILENCE_MS = 512


def level(calls: int, p95: float, steal: float | None, stalls: float = 0.0) -> dict:
    return {"calls": calls, "call_count": calls, "answered": calls, "turn_p95_ms": p95, "stall_pct": stalls,
            "steal_pct": steal}


def test_a_miss_only_counts_when_the_host_left_the_cpu_alone() -> None:
    test = partial(sustained, silence_ms=SILENCE_MS)
    levels = [level(1, 547, 5.8), level(64, 611, 31.0), level(96, 613, 26.6), level(128, 700, 11.0),
              level(192, 584, 5.6), level(224, 616, CLEAN_STEAL_PCT), level(256, 590, 1.0)]
    assert capacity(levels, test) == 64, "the strict rule stops at the first miss"
    # 96 and 128 missed while the host stole more than CLEAN_STEAL_PCT: not counted; 224 missed on a clean
    # run: nothing above it counts, even a pass.
    assert capacity_despite_steal(levels, test) == 192
    clean_miss = [level(1, 547, 0.0), level(64, 640, 2.0), level(96, 600, 30.0)]
    assert capacity_despite_steal(clean_miss, test) == 1
    assert capacity_despite_steal([level(1, 700, 40.0), level(8, 720, 20.0)], test) == 0, "no pass, no capacity"
    # Stalls and unanswered calls fail a level as before (a clean miss: the pass above it does not count).
    above = level(16, 560, 0.0)
    assert capacity_despite_steal([level(1, 547, 0.0), level(8, 550, 0.0, stalls=1.5), above], test) == 1
    assert capacity_despite_steal([level(1, 547, None), {**level(8, 550, None), "answered": 7}, above], test) == 1

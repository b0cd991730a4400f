"""The benchmark's CPU-steal accounting (benchmarks/_common.py, bench.py, _report.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _common  # noqa: E402
import _report  # noqa: E402
import bench  # noqa: E402

STAT = """cpu  1000 10 300 5000 20 0 5 400 0 0
cpu0 600 5 200 2000 10 0 3 300 0 0
cpu1 400 5 100 3000 10 0 2 100 0 0
intr 12345 0 0
ctxt 999
"""


def test_parse_cpu_ticks_sums_the_cpus_asked_for():
    assert _common.parse_cpu_ticks(STAT) == (400, 1000 + 10 + 300 + 5000 + 20 + 0 + 5 + 400)
    assert _common.parse_cpu_ticks(STAT, {1}) == (100, 400 + 5 + 100 + 3000 + 10 + 2 + 100)
    assert _common.parse_cpu_ticks(STAT, {0, 1}) == (400, 3118 + 3617)
    assert _common.parse_cpu_ticks(STAT, {7}) is None


def test_steal_percent_of_the_ticks_in_between():
    assert _common.steal_percent((100, 1000), (150, 1200)) == pytest.approx(25.0)
    assert _common.steal_percent(None, (150, 1200)) is None
    assert _common.steal_percent((100, 1000), (100, 1000)) is None
    ticks = _common.cpu_ticks()  # this machine (Linux): its own CPUs
    assert ticks is not None and 0 <= ticks[0] <= ticks[1]


def test_stolen_runs_are_counted_and_left_out_of_the_medians():
    def run(status, infer, steal):
        metrics = {"infer_img_s": infer, "infer_steal_pct": steal, "train_steal_pct": 1.0}
        return {"status": status, "metrics": metrics}

    runs = [run("stolen", 5.0, 40.0), run("ok", 10.0, 2.0), run("ok", 12.0, 4.0)]
    assert bench.max_steal(runs[0]) == 40.0
    assert bench.max_steal({"metrics": {}}) is None
    entry = {"label": "A", "runs": runs}
    entry["summary"] = _report.summarize(runs)
    assert entry["summary"]["infer_img_s"]["median"] == 11.0
    results = {"frameworks": {"a": entry}, "args": {"max_steal": 10.0}}
    (note,) = _report._steal_notes(results)
    assert "A 3% / 1%" in note and "Runs over 10% measured again: 1." in note

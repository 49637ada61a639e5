"""``fastbind bench`` (fastbind.benchmark.main): the shape of its table and JSON, never its timings."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from fastbind import bench_report, benchmark

CASES = ["direct await", "binding [c]", "binding [py]", "direct method call", "rpc [c]", "rpc [py]",
         "raw ASGI by hand", "httpx ASGITransport", "aiohttp loopback"]


def test_quick_run_prints_the_table_and_saves_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert benchmark.main(["--quick", "--calls", "20", "--rounds", "1", "--json", str(out)]) == 0

    lines = capsys.readouterr().out.splitlines()
    head = lines[1].split()
    assert head[:5] == ["case", "median", "ns/op", "min", "max"]
    assert "x floor" in lines[1] and "x method" in lines[1] and "x raw ASGI" in lines[1]
    rows = {case: next(line for line in lines if line.startswith(case)) for case in CASES}
    assert rows["direct await"].split()[-5] == "1"  # each floor against itself
    assert rows["direct method call"].split()[-4] == "1"
    assert "vs its reference" in lines[1]
    assert " 1x direct await " in rows["direct await"] and " 1x direct method call " in rows["direct method call"]
    if "skipped" not in rows["rpc [c]"]:
        assert "x direct method call " in rows["rpc [c]"]  # RPC against a method call, not an await
    assert "x direct await " in rows["binding [py]"] and "x direct await " in rows["raw ASGI by hand"]
    assert not any(line.startswith("target: ") or "NOT met" in line for line in lines)  # no verdicts unasked

    report = json.loads(out.read_text())
    assert report["calls_per_batch"] == 20 and report["rounds"] == 1
    assert {"nproc", "cpu", "python", "uvloop"} <= report["machine"].keys()
    pinned = report["pinned_cpu"]  # the last CPU the process may use, where it can pin
    assert pinned == (max(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else None)
    assert (", not pinned" in lines[0]) == (pinned is None)
    assert [case["name"] for case in report["cases"]] == CASES
    for case in report["cases"]:
        if case["skipped"]:  # a peer or core that is not installed here
            assert case["ratios"] == {}
            continue
        assert case["min"] <= case["median"] <= case["max"]
        assert len(case["samples"]) == 1
        assert case["ratios"]["direct await"] > 0
        assert case["ratios"]["direct method call"] > 0
    assert "targets" not in report
    refs = {case["name"]: case["ref"] for case in report["cases"]}
    assert refs["rpc [c]"] == refs["rpc [py]"] == "direct method call" and refs["direct method call"] == "direct method call"
    assert refs["binding [c]"] == refs["aiohttp loopback"] == "direct await"


def test_targets_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert benchmark.main(["--quick", "--calls", "5", "--rounds", "1", "--targets", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    verdicts = [line for line in lines if line.startswith("target: ")]
    assert len(verdicts) == len(benchmark.TARGETS)
    assert all(line.endswith((": met", ": not met", ": not measured")) for line in verdicts)
    report = json.loads(out.read_text())
    assert [t["target"] for t in report["targets"]] == [t.title for t in benchmark.TARGETS]


def test_each_ratio_is_against_its_own_reference_and_every_bar_is_drawn(tmp_path: Path) -> None:
    results = [
        benchmark.CaseResult("direct await", "floor", "floor", samples=[100.0]),
        benchmark.CaseResult("binding [c]", "fastbind", samples=[140.0], ref="direct await"),
        benchmark.CaseResult("direct method call", "floor", "method", samples=[25.0]),
        benchmark.CaseResult("rpc [c]", "fastbind", samples=[75.0], ref="direct method call"),
        benchmark.CaseResult("httpx ASGITransport", "peer", "httpx", samples=[40_000.0], ref="direct await"),
    ]
    own = {r.name: bench_report.own_ratio(r, results) for r in results}
    assert own == pytest.approx({"direct await": 1.0, "binding [c]": 1.4, "direct method call": 1.0,
                                 "rpc [c]": 3.0, "httpx ASGITransport": 400.0})
    pytest.importorskip("matplotlib")  # the chart itself, where the plot extra is installed
    import matplotlib.pyplot as plt

    drawn: dict[str, Any] = {}
    real_savefig = plt.Figure.savefig

    def keep(fig: Any, *args: Any, **kwargs: Any) -> None:
        (ax,) = fig.axes
        drawn["xlim"] = ax.get_xlim()
        drawn["bars"] = {t.get_text(): p.get_width() for t, p in zip(ax.get_yticklabels(), ax.patches)}
        drawn["labels"] = [t.get_text() for t in ax.texts]
        real_savefig(fig, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Figure, "savefig", keep)
        bench_report.plot(results, str(tmp_path / "chart.png"))
    assert (tmp_path / "chart.png").stat().st_size > 0
    assert drawn["bars"] == pytest.approx(own)
    low, high = drawn["xlim"]
    assert all(low < width < high for width in drawn["bars"].values())  # every bar on the axis
    assert drawn["labels"] == ["1x direct await", "1.4x direct await", "1x direct method call",
                               "3x direct method call", "400x direct await"]


def test_missing_peer_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # import httpx now raises ImportError
    assert benchmark.main(["--quick", "--calls", "5", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "httpx ASGITransport" in out
    assert "note: httpx ASGITransport: skipped, httpx is not installed" in out


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(["--quick", "--plot", "chart.png"])
    assert exit_.value.code == 2
    assert "pip install 'fastbind[plot]'" in capsys.readouterr().err


@pytest.mark.parametrize("worker", ["rpc", "rpc_sync", "method", "sync_method"])
def test_rpc_timing_parents(core: Any, run: Any, worker: str) -> None:
    """Each RPC timing parent makes its calls and reports a time; RPC calls are in the ledger."""
    rt = benchmark.rpc_runtime(core)
    reports: list[Any] = []
    rt.on_pipeline_end = reports.append
    assert run(benchmark.timed_dispatch(rt, worker, 5)) >= 0
    records = [(r.caller, r.target, r.kind, r.outcome) for r in reports[0].subrequests]
    calls = [(worker, "rpc_child", "rpc", "ok")] * 5 if worker.startswith("rpc") else []
    assert records == calls


def test_targets_are_decided_by_the_per_round_median() -> None:
    # The machine slowed down half-way: the ratio of medians mixes the two halves,
    # the per-round ratios do not, and they decide.
    floor = benchmark.CaseResult("direct await", "floor", samples=[100, 100, 100, 200, 200])
    binding = benchmark.CaseResult("binding [c]", "fastbind", samples=[140, 140, 140, 280, 280])
    assert benchmark.paired_ratio(binding, floor) == pytest.approx(1.4)
    checks = {c["target"]: c for c in benchmark.check_targets([floor, binding])}
    title = "binding [c] at most 1.5x a direct await"
    check = checks[title]
    assert check["measured"] == pytest.approx(1.4) and check["paired"] == pytest.approx(1.4)
    assert check["met"] is True
    # The floor's slow half started a round earlier: its median is a slow sample, the
    # binding's a fast one. Ratio of medians 0.7x; each round says 1.4x but one.
    drifted = benchmark.CaseResult("direct await", "floor", samples=[100, 100, 200, 200, 200])
    check = {c["target"]: c for c in benchmark.check_targets([drifted, binding])}[title]
    assert check["measured"] == pytest.approx(0.7) and check["paired"] == pytest.approx(1.4)
    assert check["met"] is True
    slow = benchmark.CaseResult("binding [c]", "fastbind", samples=[160, 160, 160, 320, 320])
    check = {c["target"]: c for c in benchmark.check_targets([drifted, slow])}[title]
    assert check["measured"] == pytest.approx(0.8) and check["paired"] == pytest.approx(1.6)
    assert check["met"] is False


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_measuring_is_pinned_to_one_cpu_and_unpinned_after() -> None:
    allowed = os.sched_getaffinity(0)
    with benchmark.pinned(None) as cpu:
        assert cpu == max(allowed) and os.sched_getaffinity(0) == {cpu}
    assert os.sched_getaffinity(0) == allowed
    with benchmark.pinned(-1) as cpu:
        assert cpu is None and os.sched_getaffinity(0) == allowed
    with pytest.raises(ValueError, match="is not a CPU this process may use"):
        with benchmark.pinned(max(allowed) + 1):
            pass
    assert os.sched_getaffinity(0) == allowed


def test_bench_names_the_cpu_and_refuses_one_it_cannot_use(capsys: Any) -> None:
    assert benchmark.main(["--quick", "--calls", "5", "--rounds", "1", "--cpu", "-1"]) == 0
    assert ", not pinned\n" in capsys.readouterr().out
    if hasattr(os, "sched_getaffinity"):
        with pytest.raises(SystemExit) as exit_:
            benchmark.main(["--quick", "--cpu", str(max(os.sched_getaffinity(0)) + 1)])
        assert exit_.value.code == 2
        assert "is not a CPU this process may use" in capsys.readouterr().err

"""The run history never shows "NaN" (issue 39, item 8): a run in flight says so where its duration will be, a run
without a score shows a dash, finished runs keep their numbers."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from dashboards.runs import RunPanel

T0 = pd.Timestamp("2026-01-01 10:00:00", tz="UTC")


def _run(run_id: str, status: str, finished: bool, metrics: dict) -> SimpleNamespace:
    return SimpleNamespace(id=run_id, status=status, model_id="baseline", dataset_id="d1", stage=status,
                           progress=1.0 if finished else 0.4, started_at=None if status == "queued" else T0,
                           finished_at=T0 + pd.Timedelta(seconds=42) if finished else None, created_at=T0,
                           metrics=metrics, parameters={}, created_by="alice")


def test_runs_in_flight_and_runs_without_a_score_show_words_not_nan():
    runs = [_run("a" * 36, "running", False, {}), _run("b" * 36, "queued", False, {}),
            _run("c" * 36, "done", True, {"macro_f1": 0.9312}), _run("d" * 36, "done", True, {})]
    view = SimpleNamespace(platform=SimpleNamespace(datasets=SimpleNamespace(list=lambda: []),
                                                    runs=SimpleNamespace(list=lambda: runs)),
                           shown=lambda rows, _show: rows, show="all")
    frame = RunPanel._history(view, {"baseline": "Baseline"})
    assert frame["duration_s"].tolist() == ["running", "queued", "42.0", "42.0"]
    assert frame["macro_f1"].tolist() == ["—", "—", "0.931", "—"]
    shown = frame.astype(str).to_numpy().ravel().tolist()
    assert not any(cell.lower() in ("nan", "none", "<na>") for cell in shown), shown

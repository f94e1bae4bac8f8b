"""The comparison bench's seed handling (bench/compare.py): runs merge into one table.

Specification:
- ``--method-seeds`` is parsed into a list; without it the methods run once, at ``--seed``.
- ``seed_summary`` gives one line per model, target and method with the mean accuracy over
  its seeds, the drop against the original, the min - max spread and the mean speedup at each
  latency batch asked for (a batch a row was not timed at stays blank); it is empty when every
  method ran once.
- ``merge_runs`` keeps one ``original`` row per model and one row per model, target, method
  and seed (the first run's); rows saved before the seed column existed carry their run's
  ``--seed``; runs that trained different base models are refused.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import compare  # noqa: E402


def _row(method: str, acc: float, seed: int | None = None, target: float = 0.5, model: str = "vgg") -> dict:
    r = {"model": model, "target": target, "method": method, "accuracy": acc, "flops_ratio": 0.48,
         "latency_b32": {"speedup": 1.5}}
    if seed is not None:
        r["seed"] = seed
    return r


def _original(acc: float = 0.91, model: str = "vgg") -> dict:
    return {"model": model, "target": 1.0, "method": "original", "accuracy": acc}


def _run(rows: list[dict], seed: int = 0, base: str = "vgg-e4-s0") -> dict:
    return {"command": f"run {seed}", "args": {"seed": seed}, "base_models": {"vgg": {"name": base}}, "rows": rows}


def test_method_seeds_default_to_the_single_seed():
    assert compare.parse_args(["--seed", "3"]).method_seeds == [3]
    assert compare.parse_args(["--method-seeds", "0,1,2"]).method_seeds == [0, 1, 2]


def test_seed_summary_means_and_spreads_per_method():
    rows = [_original(0.91), _row("smof", 0.900, 0), _row("smof", 0.906, 1), _row("tp", 0.905, 0),
            _row("tp", 0.903, 1)]
    lines = compare.seed_summary(rows).splitlines()
    smof = next(line for line in lines if "| smof |" in line)
    cells = [c.strip() for c in smof.strip("|").split("|")]
    assert cells[3:7] == ["2", "90.30", "0.70", "90.00 - 90.60"]
    assert len(lines) == 4  # header, rule, smof, tp


def test_seed_summary_has_a_speedup_column_per_batch():
    rows = [_original(0.91), _row("smof", 0.900, 0), _row("smof", 0.906, 1)]
    rows[1]["latency_b1"] = {"speedup": 1.2}
    rows[2]["latency_b1"] = {"speedup": 1.4}
    header, _, smof = compare.seed_summary(rows, [1, 32, 64]).splitlines()
    assert header.endswith("| mean b1 speedup | mean b32 speedup | mean b64 speedup |")
    assert [c.strip() for c in smof.strip("|").split("|")][-3:] == ["1.30x", "1.50x", ""]


def test_seed_summary_is_empty_for_single_runs():
    assert compare.seed_summary([_original(), _row("smof", 0.9, 0), _row("tp", 0.9, 0)]) == ""


def test_merge_keeps_one_row_per_seed_and_one_original():
    old = _run([_original(), _row("smof", 0.905)], seed=0)              # no seed column yet
    new = _run([_original(0.5), _row("smof", 0.999, 0), _row("smof", 0.907, 1)], seed=0)
    commands, rows = compare.merge_runs([old, new])
    assert commands == ["run 0", "run 0"]
    assert [(r["method"], r["seed"], r["accuracy"]) for r in rows] == [
        ("original", 0, 0.91), ("smof", 0, 0.905), ("smof", 1, 0.907)]


def test_merge_refuses_runs_of_different_base_models():
    with pytest.raises(SystemExit, match="different base vgg"):
        compare.merge_runs([_run([_original()]), _run([_original()], base="vgg-e4-s1")])


def test_every_method_has_a_runner_and_smof_outputs_turns_the_stage_outputs_off(monkeypatch):
    assert set(compare.ALL_METHODS) == set(compare.METHOD_RUNNERS)
    seen = {}
    monkeypatch.setattr(compare, "_compress", lambda ctx, method, **kw: seen.update(kw, method=method))
    monkeypatch.setattr(compare, "_train_options", lambda ctx: {})
    compare.METHOD_RUNNERS["smof_outputs"](None)
    assert seen == {"method": "smof", "feature_distill": 0.0}

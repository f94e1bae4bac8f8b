"""``--target-latency``: shared by the methods that select gates (``smof``, ``l2``). Torch-free.

- :func:`latency_budget`: None without ``target_latency``; else the predicted-latency budget of
  the problem's canonical model (:mod:`smof_onnx.learn.latency_budget`), its table measured by
  ONNX Runtime at ``bench_batch`` (:func:`bench_batch`: the model's own batch when its inputs fix
  one) with 2 intra-op threads (the bench setting; cached per model,
  settings and machine).
- :func:`correct_by_measurement`: the table times each conv alone, so its prediction of the
  whole cut model can be off either way (measured: the default model at ``--target-latency
  0.5`` predicted 0.50 and ran 0.55; the bench ResNet-20 at 0.556 predicted 0.554 and ran
  0.45, raised to 0.658 it ran 0.655: the error jumps with the 16-channel steps). After the
  selection, the cut model is timed and the predicted-latency goal moves: to ``target -
  (measured - predicted)`` (the last gap, taken as the prediction's offset) while only one side
  is known, down while the model is too slow, *up* while it is more than :data:`SLACK` under
  the target (time left unspent is accuracy thrown away); once one goal has met the target and
  another has run over, to their midpoint (bisection). The gates are selected again with each
  goal; ``rounds`` timings at most, a selection seen before is not timed again. One 4-second
  timing is noisy (the same selection read 0.51 and 0.58 of the original's time), and taking the
  largest goal that *read* within the target favours the reads that came out low, so the chosen
  selection is timed once more and kept only when that timing is within the target too; else the
  next-largest goal timed within the target is confirmed the same way (:data:`CONFIRMATIONS` at
  most), and when none is confirmed, the smallest goal timed within the target is returned. When
  no selection was timed within the target, the last one is returned (its goal lowered by the
  last gap, untimed). Each timing, confirmations included (``"confirms": true``), is a record
  of the result's ``rounds``.
- :func:`latency_report`: cuts the zeroed model and times it against the canonical original
  (:func:`smof_onnx.verify.compare_latency`, alternating sessions, no spinning), so the report
  shows the predicted next to the measured ratio and the self-vs-self noise floor.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from smof_onnx.passes import graph as pgraph
from smof_onnx.passes import pipeline

from ..batching import fixed_batch
from ..errors import UnsupportedModelError
from ..learn.latency_budget import DEFAULT_THREADS, LatencyBudget, build_latency_budget
from . import CompressConfig

__all__ = ["latency_budget", "latency_report", "correct_by_measurement", "Correction", "bench_batch"]

MEASURE_S = 4.0
# A timed model this far under the latency target (fraction of the original's time) is close
# enough: a raised goal would cost another selection and timing for little accuracy.
SLACK = 0.02
GOAL_TOLERANCE = 0.005  # bisection stops when the goals that met and ran over are this close
CONFIRMATIONS = 2  # selections re-timed before the most conservative one timed within the target is kept


@dataclasses.dataclass(frozen=True)
class Correction:
    """The result of :func:`correct_by_measurement`: the gates, their FLOPs ratios
    (``{"estimated", "cut"}``) and one record per timing, in the order they ran."""
    h: np.ndarray
    ratios: dict
    rounds: list[dict]


def latency_budget(problem, config: CompressConfig) -> LatencyBudget | None:
    if config.target_latency is None:
        return None
    bar = None
    if config.progress_bars:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(desc="latency table", file=sys.stderr, leave=True, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        return build_latency_budget(problem.model, problem.shapes, problem.budget.terms, problem.space,
                                    batch=bench_batch(problem, config), threads=DEFAULT_THREADS, progress=progress)
    finally:
        if bar is not None:
            bar.close()


def bench_batch(problem, config: CompressConfig) -> int:
    """``config.bench_batch``, or the model's own batch when its inputs fix one (it runs no other)."""
    return fixed_batch(problem.model) or config.bench_batch


def _measure(problem, zeroed: onnx.ModelProto, config: CompressConfig):
    from ..verify import compare_latency

    cut = pgraph.to_model(pipeline.cut(pgraph.to_graph(zeroed), problem.shapes).graph)
    batch = bench_batch(problem, config)
    bench = {k: [batch, *list(v)[1:]] for k, v in problem.shapes.items()}
    return compare_latency(problem.model, cut, bench, threads=DEFAULT_THREADS, batch=batch,
                           budget_s=MEASURE_S)


def correct_by_measurement(problem, latency: LatencyBudget, scores: np.ndarray, h: np.ndarray, ratios: dict,
                           config: CompressConfig, select, rounds: int = 4) -> Correction:
    """The selection whose cut model is timed within the target; see the module docstring."""
    target = float(config.target_latency)
    goal = target
    history: list[dict] = []
    met: dict[bytes, tuple] = {}  # selection -> (largest goal, h, ratios) of those timed within the target
    over_goal = None       # the smallest goal whose selection was timed over it
    timed: dict[bytes, float] = {}

    def time_selection(goal: float, h: np.ndarray, **record) -> float:
        cmp = _measure(problem, problem.space.apply(problem.model, h), config)
        ratio = cmp.b.median_ms / cmp.a.median_ms
        predicted = float(latency.ratio(problem.space.effective(h)))
        history.append({"goal": round(goal, 4), "predicted_ratio": round(predicted, 4),
                        "measured_ratio": round(ratio, 4), "self_ratio": round(cmp.self_ratio, 4), **record})
        return ratio

    for _ in range(4 * rounds):  # a repeated selection is not timed twice, so bound the loop too
        key = np.asarray(h >= 0.5).tobytes()
        predicted = float(latency.ratio(problem.space.effective(h)))
        if key not in timed:
            if len(history) == rounds:
                break
            timed[key] = time_selection(goal, h)
        measured = timed[key]
        if measured <= target:
            if key not in met or goal > met[key][0]:
                met[key] = (goal, h, ratios)
            if target - measured <= SLACK:
                break
        elif over_goal is None or goal < over_goal:
            over_goal = goal
        previous = goal
        best_met = max((g for g, _, _ in met.values()), default=None)
        if best_met is not None and over_goal is not None:
            if over_goal - best_met < GOAL_TOLERANCE:
                break
            goal = (best_met + over_goal) / 2
        else:
            goal = target - (measured - predicted)  # the gap to the prediction, taken as the model's offset
        if goal <= 0 or abs(goal - previous) < 1e-9:
            break
        try:
            h, ratios = select(problem, scores, config.target_flops, extra=[(latency, goal)])
        except UnsupportedModelError:  # the lowered goal is out of reach: keep the last selection
            break
    if not met:
        return Correction(h, ratios, history)
    ranked = sorted(met.values(), key=lambda m: -m[0])
    for goal, h_met, ratios_met in ranked[:CONFIRMATIONS]:
        if time_selection(goal, h_met, confirms=True) <= target:
            return Correction(h_met, ratios_met, history)
    _, h_low, ratios_low = ranked[-1]  # the most conservative selection timed within the target
    return Correction(h_low, ratios_low, history)


def latency_report(problem, latency: LatencyBudget, zeroed: onnx.ModelProto, h: np.ndarray,
                   config: CompressConfig) -> dict:
    cmp = _measure(problem, zeroed, config)
    e = problem.space.effective(h)
    return {"target": config.target_latency, "predicted_ratio": round(float(latency.ratio(e)), 4),
            "predicted_ms": round(float(latency.ms(e)), 4), "predicted_ms_before": round(float(latency.total), 4),
            "measured_ratio": round(cmp.b.median_ms / cmp.a.median_ms, 4),
            "measured_ms": round(cmp.b.median_ms, 4), "measured_ms_before": round(cmp.a.median_ms, 4),
            "self_ratio": round(cmp.self_ratio, 4), "bench_batch": bench_batch(problem, config),
            "threads": DEFAULT_THREADS}

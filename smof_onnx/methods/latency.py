"""``--target-latency``: shared by the methods that select gates (``smof``, ``l2``). Torch-free.

- :func:`latency_budget`: None without ``target_latency``; else the predicted-latency budget of
  the problem's canonical model (:mod:`smof_onnx.learn.latency_budget`), its table measured by
  ONNX Runtime at ``bench_batch`` with 2 intra-op threads (the bench setting; cached per model,
  settings and machine).
- :func:`latency_report`: cuts the zeroed model and times it against the canonical original
  (:func:`smof_onnx.verify.compare_latency`, alternating sessions, no spinning), so the report
  shows the predicted next to the measured ratio and the self-vs-self noise floor.
"""
from __future__ import annotations

import numpy as np
import onnx

from passes import graph as pgraph
from passes import pipeline

from ..learn.latency_budget import DEFAULT_THREADS, LatencyBudget, build_latency_budget
from . import CompressConfig

__all__ = ["latency_budget", "latency_report"]

MEASURE_S = 4.0


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
                                    batch=config.bench_batch, threads=DEFAULT_THREADS, progress=progress)
    finally:
        if bar is not None:
            bar.close()


def latency_report(problem, latency: LatencyBudget, zeroed: onnx.ModelProto, h: np.ndarray,
                   config: CompressConfig) -> dict:
    from ..verify import compare_latency

    cut = pgraph.to_model(pipeline.cut(pgraph.to_graph(zeroed), problem.shapes).graph)
    bench = {k: [config.bench_batch, *list(v)[1:]] for k, v in problem.shapes.items()}
    cmp = compare_latency(problem.model, cut, bench, threads=DEFAULT_THREADS, batch=config.bench_batch,
                          budget_s=MEASURE_S)
    e = problem.space.effective(h)
    return {"target": config.target_latency, "predicted_ratio": round(float(latency.ratio(e)), 4),
            "predicted_ms": round(float(latency.ms(e)), 4), "predicted_ms_before": round(float(latency.total), 4),
            "measured_ratio": round(cmp.b.median_ms / cmp.a.median_ms, 4),
            "measured_ms": round(cmp.b.median_ms, 4), "measured_ms_before": round(cmp.a.median_ms, 4),
            "self_ratio": round(cmp.self_ratio, 4), "bench_batch": config.bench_batch,
            "threads": DEFAULT_THREADS}

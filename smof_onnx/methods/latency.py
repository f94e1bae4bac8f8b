"""``--target-latency``: shared by the methods that select gates (``smof``, ``l2``). Torch-free.

- :func:`scoring_latency`: smof's default gate scores read the predicted time each gate saves,
  so the table is measured (or read from the cache) for every run unless ``--no-latency``; where
  ONNX Runtime cannot time the convs it falls back to FLOPs and says why (``source``).
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
- :func:`use_runtime_counts`: with a measured table, the channel counts it predicts run slower
  than a larger count of the same family are left out of the selection.
- ``--latency-runtime`` (``ort`` default, ``ort-int8``, ``openvino``): the runtime the table, the corrections
  and the report's timings run on (:mod:`smof_onnx.export.runtimes`): the best channel counts and the
  time a kernel cut saves differ by runtime (ONNX Runtime runs counts that are not multiples of
  16 slower on this CPU; OpenVINO did not).
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

__all__ = ["latency_budget", "scoring_latency", "latency_report", "correct_by_measurement", "Correction",
           "bench_batch", "use_runtime_counts"]

MEASURE_S = 4.0
REPORT_S = 0.5  # the report's timing without a latency target: informative, not a contract
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


def scoring_latency(problem, config: CompressConfig) -> tuple[LatencyBudget | None, str]:
    """smof's gate scores: the latency budget (measured or cached) and ``"measured"``, or None and
    ``"flops (<why>)"`` with ``--no-latency`` or where ONNX Runtime cannot time the model's convs
    one by one. With ``--target-latency`` a failure to measure is an error, not a fallback."""
    if config.target_latency is not None:
        return latency_budget(problem, config), "measured"
    if config.no_latency:
        return None, "flops (--no-latency)"
    if not any(n.op_type == "Conv" for n in problem.model.graph.node):
        return None, "flops (no Conv layer to time)"
    batch, why = table_batch(problem, config)
    if batch is None:
        return None, f"flops ({why})"
    try:
        budget = latency_budget(problem, config, force=True, batch=batch)
    except Exception as exc:  # noqa: BLE001 -- any runtime failure to time a layer means: score by FLOPs
        return None, f"flops (ONNX Runtime could not time the layers: {type(exc).__name__}: {exc})"[:300]
    if not budget.layers or budget.total <= 0:
        return None, "flops (no Conv layer could be timed)"
    return budget, "measured" if why is None else f"measured ({why})"


TABLE_FACTOR = 3.0  # ONNX Runtime's arena and the feed's copies over a cell's estimated bytes
# The longest a scoring table may take (estimated, :func:`smof_onnx.learn.latency.table_seconds`):
# a lower batch first, else FLOPs scores. ResNet-20 (28x28) at batch 32 takes about 50 s here.
TABLE_SECONDS = 180.0


def memory_room(config: CompressConfig) -> int | None:
    """Bytes the memory budget (``--max-memory``, else the learning stage's default,
    :mod:`smof_onnx.learn.memory`) leaves above the process's memory now; None: unknown."""
    from ..learn import memory

    found = memory.budget(config.max_memory)
    return None if found is None else found[0] - memory.current_rss()


def table_batch(problem, config: CompressConfig) -> tuple[int | None, str | None]:
    """The batch the scoring table is timed at: :func:`bench_batch`, halved while its estimated
    time exceeds :data:`TABLE_SECONDS` (unless cached) or
    ``TABLE_FACTOR`` x its largest cell (:func:`smof_onnx.learn.latency.cell_bytes`) does not fit
    in the memory budget (``--max-memory``, else the learning stage's default,
    :mod:`smof_onnx.learn.memory`) above the process's memory now; a lower batch ranks the
    layers alike (a conv's time grows with its batch). Returns (batch, why it was lowered) or
    (None, why no table fits)."""
    from ..learn import memory
    from ..learn.latency import is_cached, table_peak_bytes, table_seconds
    from ..learn.latency_budget import table_config

    batch = bench_batch(problem, config)
    room = memory_room(config)
    if room is None:
        return batch, None
    fixed = fixed_batch(problem.model) is not None

    def need(b: int) -> int:
        return int(TABLE_FACTOR * table_peak_bytes(problem.model, problem.shapes, b))

    def seconds(b: int) -> float:
        config_b = table_config(problem.space, b, runtime=config.latency_runtime)
        bench = {k: [b, *list(v)[1:]] for k, v in problem.shapes.items()}
        return 0.0 if is_cached(problem.model, bench, config_b) else table_seconds(problem.model, bench, config_b)

    first = batch
    while (need(batch) > room or seconds(batch) > TABLE_SECONDS) and batch > 1 and not fixed:
        batch = max(1, batch // 2)
    if need(batch) > room:
        return None, (f"timing the largest layer at batch {batch} needs about {memory.format_bytes(need(batch))}, "
                      f"more than the {memory.format_bytes(max(room, 0))} the memory budget leaves")
    if seconds(batch) > TABLE_SECONDS:
        return None, (f"timing every layer at batch {batch} would take about {seconds(batch):.0f} s, over the "
                      f"{TABLE_SECONDS:.0f} s a scoring table may take; --target-latency times it regardless")
    return batch, None if batch == first else f"timed at batch {batch}, not {first}, to fit the memory and time budgets"


def latency_budget(problem, config: CompressConfig, force: bool = False, batch: int | None = None
                   ) -> LatencyBudget | None:
    """The latency budget with ``--target-latency`` (or ``force``), else None; its table is timed
    at ``batch`` (default :func:`bench_batch`)."""
    if config.target_latency is None and not force:
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
                                    batch=batch or bench_batch(problem, config), threads=DEFAULT_THREADS,
                                    progress=progress, runtime=config.latency_runtime)
    finally:
        if bar is not None:
            bar.close()


def use_runtime_counts(problem, latency: LatencyBudget) -> list[dict]:
    """Leave out of every channel family the counts the measured table predicts run slower than a
    larger allowed count (:meth:`LatencyBudget.dominated_counts`): the channel-multiple rule then
    follows the runtime's measurements, not only a constant. Edits ``problem.space`` in place and
    returns the report's rows (``{"tensors", "counts"}``, counts as whole tensor channels)."""
    dominated = latency.dominated_counts(problem.space)
    rows = []
    for i, fam in enumerate(problem.space.families):
        if fam.id in dominated:
            problem.space.families[i] = dataclasses.replace(fam, skip=tuple(sorted(set(fam.skip) | set(dominated[fam.id]))))
            rows.append({"tensors": list(fam.tensors[:3]), "counts": [fam.base + k for k in dominated[fam.id]]})
    return rows


def bench_batch(problem, config: CompressConfig) -> int:
    """``config.bench_batch``, or the model's own batch when its inputs fix one (it runs no other)."""
    return fixed_batch(problem.model) or config.bench_batch


@dataclasses.dataclass(frozen=True)
class _Timing:
    """The medians of one comparison (``a``: the original, ``b``: the cut model)."""
    a_ms: float
    b_ms: float
    self_ratio: float


def _measure(problem, zeroed: onnx.ModelProto, config: CompressConfig, budget_s: float | None = None,
             batch: int | None = None) -> _Timing:
    """The cut of ``zeroed`` timed against the canonical original on ``config.latency_runtime``:
    ONNX Runtime by :func:`smof_onnx.verify.compare_latency`; another runtime by
    :func:`smof_onnx.export.runtimes.time_runners` (original, cut, and the original again for the
    self-vs-self ratio, rotated)."""
    from ..verify import compare_latency, random_feeds

    cut = pgraph.to_model(pipeline.cut(pgraph.to_graph(zeroed), problem.shapes).graph)
    batch = batch or bench_batch(problem, config)
    bench = {k: [batch, *list(v)[1:]] for k, v in problem.shapes.items()}
    budget_s = MEASURE_S if budget_s is None else budget_s
    if config.latency_runtime == "ort":
        cmp = compare_latency(problem.model, cut, bench, threads=DEFAULT_THREADS, batch=batch, budget_s=budget_s)
        return _Timing(cmp.a.median_ms, cmp.b.median_ms, cmp.self_ratio)
    from ..export.runtimes import runner, time_runners

    feed = random_feeds(problem.model, bench, seed=0)
    runs = [runner(m, config.latency_runtime, DEFAULT_THREADS, calibration=feed)
            for m in (problem.model, cut, problem.model)]
    a, b, again = time_runners(runs, [feed] * 3, budget_s)
    return _Timing(a, b, again / a)


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
        ratio = cmp.b_ms / cmp.a_ms
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
                   config: CompressConfig, source: str = "measured") -> dict:
    """Predicted against measured time of the result (timed for :data:`MEASURE_S` seconds with a
    latency target, :data:`REPORT_S` without), the table's ``source`` and the channel counts the
    table predicts are no faster than the next larger one (``slower_counts``)."""
    # the batch the table was timed at (lowered where memory is short, :func:`table_batch`)
    batch = next((int(row["batch"]) for row in latency.table.layers.values() if "batch" in row), None)
    batch = batch or bench_batch(problem, config)
    if config.target_latency is None:  # informative: at a batch whose two sessions fit the memory budget
        batch = _report_batch(problem, config, batch)
    cmp = None if batch is None else _measure(problem, zeroed, config,
                                              None if config.target_latency is not None else REPORT_S, batch)
    e = problem.space.effective(h)
    return {"source": source, "target": config.target_latency,
            "slower_counts": latency.slower_counts(problem.space, h), "predicted_ratio": round(float(latency.ratio(e)), 4),
            "predicted_ms": round(float(latency.ms(e)), 4), "predicted_ms_before": round(float(latency.total), 4),
            "measured_ratio": None if cmp is None else round(cmp.b_ms / cmp.a_ms, 4),
            "measured_ms": None if cmp is None else round(cmp.b_ms, 4),
            "measured_ms_before": None if cmp is None else round(cmp.a_ms, 4),
            "self_ratio": None if cmp is None else round(cmp.self_ratio, 4), "bench_batch": batch,
            "runtime": config.latency_runtime,
            "threads": DEFAULT_THREADS, **({} if cmp is not None else {
                "not_measured": "the original and the cut model together do not fit the memory budget at batch 1"})}


def _report_batch(problem, config: CompressConfig, batch: int) -> int | None:
    """``batch`` halved while ``TABLE_FACTOR`` x two models' activations (original and cut, one
    session each) exceed :func:`memory_room`; None when not even batch 1 fits."""
    from ..learn.memory import activation_bytes

    room = memory_room(config)
    if room is None:
        return batch
    per_sample = 2 * TABLE_FACTOR * activation_bytes(problem.model, {k: list(v)[1:] for k, v in problem.shapes.items()})
    fixed = fixed_batch(problem.model) is not None
    while per_sample * batch > room and batch > 1 and not fixed:
        batch //= 2
    return batch if per_sample * batch <= room else None

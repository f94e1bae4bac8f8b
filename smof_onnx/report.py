"""The JSON report of a cut or a compression (design 5), and the human tables.

The report is built from what was measured, never recomputed by guesswork: FLOPs and
params from :func:`smof_onnx.passes.analysis.flops.count_cost` on the models before and after,
per-layer rows matched by node name (the passes keep names stable, and :func:`name_nodes` gives
every unnamed or doubly named node of the working copy a unique deterministic name at load,
before any method or pass runs, so a layer keeps its name through the cut), refusals from the
pass results, the gate's numbers from :mod:`smof_onnx.verify`. Schema::

    flops      {before, after, ratio}              ratio = after / before
    params     {before, after}
    latency_ms {before, after, speedup, threads}   only when measured
    verify     {max_rel_err, inputs}
    layers     [{name, op, kernel_before, kernel_after, in_before, in_after, out_before,
                 out_after, flops_before, flops_after}]  -- a layer the cut removed has
                 kernel_after None and zero channels / FLOPs after
    frozen     [{where, reason}]
    quality, method                                  compress only
    passes     [{pass, changed, stats}], rounds     what each pass removed
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from smof_onnx.passes.analysis.flops import LayerCost, ModelCost


def name_nodes(model) -> int:
    """Give every unnamed node of ``model``'s main graph (and every node whose name an earlier one
    already took) a unique name ``{op}_{index}`` (index in the node list; ``_2``, ``_3`` ... added
    on a clash), in place; returns how many were renamed.

    Why: a layer is identified by its node name before and after the cut. Names made up later
    (e.g. by the layer counter, from the position among the weighted layers) shift when the cut
    removes a layer, so the rows of an unnamed model would pair different layers.
    """
    taken: set[str] = set()
    todo = []
    for i, node in enumerate(model.graph.node):
        if node.name and node.name not in taken:
            taken.add(node.name)
        else:
            todo.append((i, node))
    renamed = 0
    for i, node in todo:
        base = f"{node.name}_{i}" if node.name else f"{node.op_type}_{i}"
        name, k = base, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        node.name = name
        taken.add(name)
        renamed += 1
    return renamed


def build_report(before: ModelCost, after: ModelCost, *, pipeline=None, verify=None, latency=None,
                 quality: dict | None = None, method: dict | None = None, extra: dict | None = None) -> dict[str, Any]:
    """Assemble the report; ``pipeline`` is a PipelineResult, ``verify`` a VerifyResult,
    ``latency`` a LatencyComparison (each optional)."""
    report: dict[str, Any] = {
        "flops": {"before": before.flops, "after": after.flops, "ratio": _ratio(after.flops, before.flops)},
        "params": {"before": before.params, "after": after.params},
    }
    if latency is not None:
        d = latency.to_dict()
        report["latency_ms"] = {k: d[k] for k in ("before", "after", "speedup", "threads", "batch", "self_ratio")}
    if verify is not None:
        report["verify"] = {"max_rel_err": verify.max_rel_err, "inputs": verify.inputs, "tol": verify.tol,
                            "noise_floor": getattr(verify, "noise_floor", 0.0)}
    report["layers"] = _layers(before.layers, after.layers)
    report["frozen"] = [{"where": f["where"], "reason": f["reason"], "pass": f.get("pass")}
                        for f in (pipeline.frozen() if pipeline is not None else [])]
    if pipeline is not None:
        report["passes"] = pipeline.summary()
        report["rounds"] = pipeline.rounds
    if quality is not None:
        report["quality"] = quality
    if method is not None:
        report["method"] = method
    if extra:
        report.update(extra)
    return report


def write_report(report: dict, path: str | Path) -> Path:
    """Write the report as JSON atomically (temp file + rename)."""
    import os

    path = Path(path)
    tmp = stage_report(report, path)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def stage_report(report: dict, path: str | Path) -> Path:
    """The report as JSON in a temp file beside ``path`` (its folder created), for the caller to
    ``os.replace`` into place or delete: a caller writing a model too places the report only
    after the model was written, so a failed model write leaves no report behind."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=2, default=_json_default)
            f.write("\n")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _ratio(after: float, before: float) -> float:
    return float(after) / float(before) if before else 1.0


def _layers(before: Sequence[LayerCost], after: Sequence[LayerCost]) -> list[dict[str, Any]]:
    after_by_name = {lc.name: lc for lc in after}
    rows = []
    for b in before:
        a = after_by_name.pop(b.name, None)
        rows.append(_row(b, a))
    for a in after_by_name.values():  # layers the passes created (none today), listed after
        rows.append(_row(None, a))
    return rows


def _row(b: LayerCost | None, a: LayerCost | None) -> dict[str, Any]:
    ref = b or a
    return {"name": ref.name, "op": ref.op,
            "kernel_before": list(b.kernel) if b else None, "kernel_after": list(a.kernel) if a else None,
            "in_before": b.in_channels if b else 0, "in_after": a.in_channels if a else 0,
            "out_before": b.out_channels if b else 0, "out_after": a.out_channels if a else 0,
            "flops_before": b.flops if b else 0, "flops_after": a.flops if a else 0}


# --- human tables ------------------------------------------------------------------------------

def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:g}" if isinstance(n, float) else str(n)


def _kernel(k: Sequence[int] | None) -> str:
    if k is None:
        return "-"
    return "x".join(str(v) for v in k) if k else "."


def _change(before: Any, after: Any) -> str:
    return str(before) if before == after else f"{before} -> {after}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], right: set[int]) -> list[str]:
    rows = [list(map(str, r)) for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows if r != ["---"]]) for i, h in enumerate(header)]

    def fmt(r):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    rule = "  ".join("-" * w for w in widths)
    return [fmt(header), rule] + [fmt(r) if r != ["---"] else rule for r in rows]


def format_table(report: dict[str, Any]) -> str:
    """The per-layer table of a cut / compress report, a totals row, then the refusals."""
    rows = []
    for r in report["layers"]:
        kb, ka = _kernel(r["kernel_before"]), _kernel(r["kernel_after"])
        kept = r["flops_after"] / r["flops_before"] if r["flops_before"] else 1.0
        rows.append([r["name"], r["op"], kb if kb == ka else f"{kb} -> {ka}",
                     _change(r["in_before"], r["in_after"]), _change(r["out_before"], r["out_after"]),
                     human(r["flops_before"]), human(r["flops_after"]), f"{kept:.2f}"])
    f, p = report["flops"], report["params"]
    rows.append(["---"])
    rows.append(["total", "", "", "", "", human(f["before"]), human(f["after"]), f"{f['ratio']:.2f}"])
    lines = _table(["layer", "op", "kernel", "in", "out", "FLOPs before", "FLOPs after", "kept"], rows, {5, 6, 7})
    lines.append("")
    lines.append(f"params: {human(p['before'])} -> {human(p['after'])}"
                 f" ({_ratio(p['after'], p['before']):.2f})")
    if "verify" in report:
        v = report["verify"]
        lines.append(f"verified: max rel err {v['max_rel_err']:.2e} over {v['inputs']} inputs")
    if "latency_ms" in report:
        lat = report["latency_ms"]
        lines.append(f"latency: {lat['before']:.3f} ms -> {lat['after']:.3f} ms, speedup {lat['speedup']:.2f}x "
                     f"({lat['threads']} threads; self-vs-self {lat.get('self_ratio', float('nan')):.2f})")
    if "quality" in report:
        lines.append(f"quality: {json.dumps(report['quality'], default=_json_default)}")
    lines += _frozen_lines(report.get("frozen", []))
    return "\n".join(lines)


def format_inspect(info: dict[str, Any]) -> str:
    """The per-layer table of ``smof_onnx.api.inspect``, then the channel groups and refusals."""
    lines = [f"model: opset {info.get('opset')}, {len(info['layers'])} weighted layers"]
    for kind in ("inputs", "outputs"):
        for t in info.get(kind, []):
            lines.append(f"  {kind[:-1]} {t['name']}: {t['dtype']} {t['shape']}")
    rows = [[r["name"], r["op"], _kernel(r["kernel"]), r["in_channels"], r["out_channels"], r["groups"],
             human(r["flops"]), human(r["params"]), "x".join(map(str, r["output_shape"]))]
            for r in info["layers"]]
    rows.append(["---"])
    rows.append(["total", "", "", "", "", "", human(info["flops"]), human(info["params"]), ""])
    lines.append("")
    lines += _table(["layer", "op", "kernel", "in", "out", "groups", "FLOPs", "params", "output"], rows,
                    {3, 4, 5, 6, 7})
    groups = info.get("channel_groups")
    if groups is not None:
        frozen = [g for g in groups if g.get("frozen")]
        blocked = [g for g in groups if not g.get("frozen") and g.get("gateable") is False]
        cuttable = len(groups) - len(frozen) - len(blocked)
        lines.append("")
        lines.append(f"channel groups: {len(groups)} ({cuttable} cuttable, {len(frozen)} frozen"
                     + (f", {len(blocked)} neither removable nor gateable)" if blocked else ")"))
        for g in frozen:
            lines.append(f"  frozen {g['id']} ({g.get('size', '?')} ch): {g.get('reason', '')}")
        for g in blocked:
            lines.append(f"  not gateable {g['id']} ({g.get('size', '?')} ch): {g.get('reason', '')}")
    blocks = info.get("residual_blocks")
    if blocks is not None:
        lines.append("")
        lines.append(f"residual blocks (--method 3d can remove): {len(blocks)}"
                     + ("" if blocks else "; layers outside residual branches are never depth-pruned"))
        for b in blocks:
            lines.append(f"  {b['id']}: {b['shortcut']} shortcut, {b['nodes']} nodes, {human(b['flops'])} FLOPs")
    lines += _frozen_lines(info.get("frozen", []))
    return "\n".join(lines)


def _frozen_lines(frozen: list[dict[str, Any]]) -> list[str]:
    if not frozen:
        return []
    lines = ["", f"left as they are ({len(frozen)}):"]
    lines += [f"  {f['where']}: {f['reason']}" for f in frozen]
    return lines


def format_plan(plan: dict[str, Any]) -> str:
    """The samples, the fit and the chosen point of a 3d plan (``smof-onnx plan``)."""
    lines = [f"3d plan at {plan['target']:g} of the FLOPs; dimensions: {', '.join(plan['space']['dims'])}"]
    for dim, why in plan["space"]["unavailable"].items():
        lines.append(f"  not used: {dim}: {why}")
    lines.append(f"{'d':>6} {'w':>6} {'r':>6} {'cost':>7} {plan['metric']:>14} {'seconds':>8}")
    for s in plan["samples"]:
        lines.append(f"{s['d']:6.3f} {s['w']:6.3f} {s['r']:6.3f} {s['cost']:7.3f} {s['quality']:14.4f} "
                     f"{s['seconds']:8.1f}")
    fit = plan.get("fit")
    if fit:
        lines.append(f"fit: {len(fit['coefficients'])} coefficients, rms residual {fit['rms']:.4f}")
    p = plan["point"]
    pred = "" if p.get("predicted_quality") is None else f", predicted {plan['metric']} {p['predicted_quality']:.4f}"
    lines.append(f"plan: d={p['d']:.3f} ({len(p['removed_blocks'])} block(s) removed) w={p['w']:.3f} r={p['r']:.3f}"
                 f" {p.get('resolution') or ''}, cost {p['cost']:.3f}{pred}")
    return "\n".join(lines)

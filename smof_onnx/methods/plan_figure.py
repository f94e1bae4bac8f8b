"""The picture ``smof-onnx plan --png`` draws: the fitted quality over (depth, resolution) at the
target cost, the samples and the optimum marked (matplotlib, imported here only).

At each (d, r) the width share is the one that spends the target exactly,
``w = target / cost(d, 1, r)`` (capped at 1; below the planner's smallest share the point is
unaffordable and left blank), so the colour is ``F(d, w(d, r), r)``: what the planner would get
there. Samples are drawn at their (d, r) with their measured quality as the colour of a circled
dot; the chosen point is a star.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def draw(plan, path: str | Path, w_min: float) -> None:
    """Write the PNG of ``plan`` (:class:`smof_onnx.methods.three_d.Plan` with a fit) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    space, fit, target = plan.space, plan.fit, plan.target
    depths = np.asarray(space.depths)
    rs = np.linspace(space.r_min, 1.0, 41) if len(space.scales) > 1 else np.array([1.0])
    grid = np.full((len(rs), len(depths)), np.nan)
    for j, d in enumerate(depths):
        for i, r in enumerate(rs):
            w = min(1.0, target / space.counted(d, r))
            if w >= w_min - 1e-9:
                grid[i, j] = float(fit(d, w, r))
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=110)
    qs = [s["quality"] for s in plan.samples]
    vmin, vmax = np.nanmin([np.nanmin(grid) if np.isfinite(grid).any() else min(qs), min(qs)]), max(qs)
    if len(depths) > 1 and len(rs) > 1:
        mesh = ax.pcolormesh(depths, rs, grid, shading="nearest", cmap="viridis", vmin=vmin, vmax=vmax)
    else:
        mesh = ax.scatter(np.repeat(depths, len(rs)), np.tile(rs, len(depths)), c=grid.T.ravel(), cmap="viridis",
                          vmin=vmin, vmax=vmax, s=12)
    fig.colorbar(mesh, ax=ax, label=f"fitted {plan.metric} at the target cost")
    ax.scatter([s["d"] for s in plan.samples], [s["r"] for s in plan.samples], c=qs, cmap="viridis", vmin=vmin,
               vmax=vmax, edgecolors="white", linewidths=1.2, s=60, label="samples (measured)")
    p = plan.point
    ax.scatter([p["d"]], [p["r"]], marker="*", s=260, c="red", edgecolors="black",
               label=f"plan: d={p['d']:.2f} w={p['w']:.2f} r={p['r']:.2f}")
    ax.set_xlabel("depth d (fraction of residual blocks kept)")
    ax.set_ylabel("resolution r (fraction of the input size)")
    ax.set_title(f"3d plan at {target:g} of the FLOPs")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

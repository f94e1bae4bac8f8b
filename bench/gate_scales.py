"""Why does smof's search keep no kernel ring? Gate importances against the real loss they predict.

    OMP_NUM_THREADS=1 python bench/gate_scales.py [--calib 4096] [--epochs 1] [--target 0.5]
                                                  [--set selection_score=flops]

Runs ``smof_onnx.api.compress`` on the embedded default model (models/default) with
``--finetune-epochs 0`` and a wrapped :func:`smof_onnx.learn.search.search`: after the search it
(1) lists the search's reselections (how many rings each kept), (2) for the final selection,
the importance (``imp``), cost and score of every kernel axis's outer ring and the score the
trim stopped at, and (3) *measures* the loss increase of dropping each kept unit (a ring level,
one step of a channel family) on fixed unmixed batches of the training data, with the student
in the mode the search ran it in. ``imp`` predicts that increase (a Fisher-style estimate), so
``measured / imp`` should be about the same for rings and channels; where it is not, the score
ranks one kind of unit wrongly. Prints tables; no file is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from models import fashion_mnist  # noqa: E402
from smof_onnx import api  # noqa: E402
from smof_onnx.learn.ring_calibration import step_down  # noqa: E402

MODEL = ROOT / "models" / "default" / "resnet20_fmnist.onnx"


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--eval", type=int, default=512, help="samples the measured loss is averaged over")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    options = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}

    import torch

    from smof_onnx.learn import search as search_mod
    from smof_onnx.learn.batches import feeds_of
    from smof_onnx.learn.losses import distill_loss, output_kinds
    from smof_onnx.learn.masking import Masks
    from smof_onnx.selection.select import select

    original_search = search_mod.search
    original_fit = search_mod.fit_budget
    reselections = []

    def fit_spy(problem, h, score, tau, extra=()):
        out = original_fit(problem, h, score, tau, extra)
        space = problem.space
        rings = sum(int(out[idx[0]] >= 0.5) for idx in space.axes.values())
        reselections.append((tau, rings, len(space.axes)))
        return out

    def search_spy(problem, module, data, teacher, target, settings, teacher_module=None, **kw):
        scores = original_search(problem, module, data, teacher, target, settings, teacher_module, **kw)
        report(problem, module, data, teacher, target, settings, scores)
        return scores

    def report(problem, module, data, teacher, target, settings, scores):
        space = problem.space
        nk = len(space.kernel)
        cost = np.maximum(search_mod.gate_costs(problem, settings.channel_cost), 1e-9)
        imp = scores * cost
        print(f"\nreselections (tau, rings kept / axes): "
              + ", ".join(f"{t:.2f}:{r}/{n}" for t, r, n in reselections[::4]))
        print(f"importance means: kernel gates {imp[:nk].mean():.3f}, channel gates {imp[nk:].mean():.4f} "
              f"(all gates 1 by construction of the normalisation only at each step)")
        h, _ = select(problem, scores, target, check=False)
        kinds = output_kinds(tuple(t[:1] for t in teacher))
        idx = np.arange(min(args.eval, len(data)))
        masks = Masks(space, module)
        module.train()

        def loss_of(g: np.ndarray) -> float:
            masks.set(g)
            total = 0.0
            with torch.no_grad():
                for part in np.array_split(idx, max(1, len(idx) // 128)):
                    out = module(*feeds_of(data, module.input_names, part))
                    total += float(distill_loss(out, [t[part] for t in teacher], kinds)) * len(part)
            return total / len(idx)

        base = loss_of(h)
        f0 = float(problem.budget.ratio(space.effective(h)))
        rows = []
        for (w, a), gates in space.axes.items():
            kept = [i for i in gates if h[i] >= 0.5]
            if not kept:
                continue
            g = h.copy()
            g[kept[0]] = 0.0
            df = f0 - float(problem.budget.ratio(space.effective(g)))
            rows.append(("ring", f"{space.kernel[kept[0]].node} axis {a}", imp[kept[0]], cost[kept[0]],
                         scores[kept[0]], loss_of(g) - base, df))
        for fam in space.families:
            worst = step_down(fam, h, scores)
            if worst is None:
                continue
            n, fidx = len(worst), fam.gates
            g = h.copy()
            g[worst] = 0.0
            df = f0 - float(problem.budget.ratio(space.effective(g)))
            rows.append(("chan", f"family {fam.id} ({len(fidx)} ch, -{n})", imp[worst].sum(), cost[worst].sum(),
                         scores[worst].mean(), loss_of(g) - base, df))
        masks.remove()
        print(f"\nfinal selection: FLOPs {f0:.3f}, rings kept {sum(int(h[i[0]] >= 0.5) for i in space.axes.values())}"
              f" of {len(space.axes)}; base loss {base:.4f}")
        print("| unit | name | imp (sum) | FLOPs saved | score | measured dLoss | dLoss / dFLOPs | dLoss / imp |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for kind, name, i, c, s, dl, df in sorted(rows, key=lambda r: r[0]):
            print(f"| {kind} | {name} | {i:.3f} | {df:.4f} | {s:.2f} | {dl:.4f} | {dl / max(df, 1e-9):.3f} | "
                  f"{dl / max(i, 1e-12):.4f} |")
        for kind in ("ring", "chan"):
            sel = [r for r in rows if r[0] == kind]
            if sel:
                print(f"{kind}: median dLoss/imp {np.median([r[5] / max(r[2], 1e-12) for r in sel]):.4f}, "
                      f"median dLoss/dFLOPs {np.median([r[5] / max(r[6], 1e-9) for r in sel]):.3f}")

    x, y = fashion_mnist.load("train")
    data = {"input": x[:args.calib], "labels": y[:args.calib]}
    with mock.patch.object(search_mod, "search", search_spy), mock.patch.object(search_mod, "fit_budget", fit_spy):
        _, rep = api.compress(onnx.load(MODEL), data=data, method="smof", target_flops=args.target,
                              epochs=args.epochs, finetune_epochs=0, val_split=0, threads=1,
                              progress_bars=False, **options)
    for row in rep["method"].get("choices", rep.get("choices", [])):
        after = row.get("kernel_after")
        if after and after != row.get("kernel_before"):
            print(f"  kernel cut: {row['name']} {row['kernel_before']} -> {after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

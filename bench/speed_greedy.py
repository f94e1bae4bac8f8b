"""A selection made for speed alone: how much of a FLOPs cut can ONNX Runtime turn into time here,
and what does such a cut cost in accuracy?

    python bench/speed_greedy.py [--model resnet20] [--flops 0.5] [--finetune-epochs 15] [--seed 0]

Starting from the whole bench model, drop one unit at a time (a kernel ring level, or one step of
a channel family to its next allowed count; the units smof's selection trims), always the one
that saves the most *predicted* time per FLOP (the latency table smof's ``--target-latency``
measures, batch 32, 2 threads), until the FLOPs budget is at or under ``--flops``. Accuracy plays
no part. The cut model is timed against the original (as ``--target-latency`` times it), then
fine-tuned with smof's fine-tune (masks fixed, distillation + CE + stage outputs, train-mode BN)
on the bench's ``--calib`` training images and scored on the 10k test images. Prints one line
per selection step and a result line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

import fmnist_models as fm  # noqa: E402
from models import fashion_mnist  # noqa: E402


def speed_units(space, h: np.ndarray) -> list[list[int]]:
    """The gates of each unit that can go next: the outermost kept ring level of every kernel
    axis, and the next allowed step down of every channel family (its first kept slots: with no
    scores to rank them, which slots go does not change the FLOPs or the predicted time)."""
    units = []
    for idx in space.axes.values():
        kept = [i for i in idx if h[i] >= 0.5]
        if kept:
            units.append([kept[0]])
    for fam in space.families:
        idx = np.asarray(fam.gates)
        kept = idx[h[idx] >= 0.5]
        allowed = [a for a in fam.allowed() if a < len(kept)]
        if allowed:
            units.append([int(i) for i in kept[:len(kept) - allowed[-1]]])
    return units


def greedy(problem, latency, flops: float, log=print) -> np.ndarray:
    space = problem.space
    h = np.ones(space.size)

    def ratios(h):
        e = space.effective(h)
        return float(problem.budget.ratio(e)), float(latency.ratio(e))

    f, t = ratios(h)
    while f > flops:
        best = None
        for unit in speed_units(space, h):
            trial = h.copy()
            trial[unit] = 0.0
            f2, t2 = ratios(trial)
            if f - f2 > 1e-9 and (best is None or (t - t2) / (f - f2) > best[0]):
                best = ((t - t2) / (f - f2), trial, f2, t2)
        if best is None:
            break
        _, h, f, t = best
        log(f"  FLOPs {f:.3f}  predicted time {t:.3f}")
    return h


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20", choices=sorted(fm.EPOCHS))
    ap.add_argument("--flops", type=float, default=0.5)
    ap.add_argument("--finetune-epochs", type=int, default=15)
    ap.add_argument("--calib", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from smof_onnx.passes import graph as pgraph
    from smof_onnx.passes import pipeline
    from smof_onnx.data import CalibrationData
    from smof_onnx.learn import train
    from smof_onnx.learn.executor import OnnxModule
    from smof_onnx.learn.latency_budget import build_latency_budget
    from smof_onnx.selection.select import cut_ratio, prepare
    from smof_onnx.methods import config_from_options
    from smof_onnx.methods import latency as latency_method

    base = fm.trained(args.model)
    problem = prepare(base.onnx, None, multiple=0)
    latency = build_latency_budget(problem.model, problem.shapes, problem.budget.terms, problem.space, batch=32)
    h = greedy(problem, latency, args.flops)
    config = config_from_options(target_flops=args.flops, target_latency=1.0, val_split=0.0, seed=args.seed,
                                 finetune_epochs=args.finetune_epochs)
    zeroed = problem.space.apply(problem.model, h)
    timed = [latency_method._measure(problem, zeroed, config) for _ in range(2)]
    measured = [c.b.median_ms / c.a.median_ms for c in timed]

    x, y = fm.calibration(args.calib, args.seed)
    data = CalibrationData({fm.INPUT: x}, y, f"fashion-mnist train ({len(x)} images)")
    settings = train.make_settings(config, len(data))
    with torch.random.fork_rng(devices=[]), train.torch_threads(args.torch_threads):
        torch.manual_seed(args.seed)
        teacher_module = OnnxModule(problem.model).eval()
        teacher = train.teacher_outputs(teacher_module, data, settings.batch_size)
        student = OnnxModule(problem.model).eval()
        train.attach_feature_taps(student, teacher_module, problem.model, settings)
        bn = train.attach_batchnorm(student, data, settings)
        train.finetune(problem, student, data, teacher, h, settings, teacher_module, bn)
        teacher_module.set_taps(())
        tuned = problem.space.apply(student.state_to_onnx(problem.model), h)
    cut = pgraph.to_model(pipeline.cut(pgraph.to_graph(tuned), problem.shapes).graph)
    x_test, y_test = fashion_mnist.load("test")
    acc = fm.ort_accuracy(cut, x_test, y_test)
    base_acc = fm.ort_accuracy(base.onnx, x_test, y_test)
    for row in problem.space.choices(problem.model, h):
        print(f"  {row['name']}: kernel {row.get('kernel_before')} -> {row.get('kernel_after')}"
              + (f", out {row['gated_out'] - row['dropped_out']}/{row['gated_out']}" if "gated_out" in row else ""))
    print(f"{args.model} speed-greedy to {args.flops}: cut FLOPs {cut_ratio(problem, h):.3f}, "
          f"time ratio {' / '.join(f'{m:.3f}' for m in measured)} (b32, 2 threads), "
          f"accuracy {acc * 100:.2f}% (original {base_acc * 100:.2f}%, drop {(base_acc - acc) * 100:.2f}) "
          f"after {settings.finetune_epochs} fine-tune epochs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""smof's default (time-aware scores, calibrated rings) against the previous default (FLOPs scores,
raw ring importances) on a bench model, with the saved Torch-Pruning rows next to them.

    OMP_NUM_THREADS=1 python bench/speed_default.py [--model resnet20] [--targets 0.5] [--seeds 0]
        [--epochs 2] [--finetune-epochs 6] [--calib 4096] [--torch-threads 1] [--variants new,old]

Per (target, seed, variant): ``smof_onnx.api.compress(<bench model>, data=<first --calib
Fashion-MNIST training images + labels>, method="smof", target_flops=F, val_split=0, ...)``;
``old`` is the same call with ``no_latency=True`` and the ring calibration off
(``TrainSettings.calibrate_rings=False``), which is the code before issue 24. Accuracy on the 10k
test images under ONNX Runtime, FLOPs of the cut model, batch-32 speedup (2 threads, 4 s,
self-vs-self in parentheses), kernels cut, the report's predicted / measured time ratio, wall.
Torch-Pruning rows: every saved ``bench/results/*.json`` row of this model and target (their base
model may be another training run of the same recipe). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import fmnist_models as fm  # noqa: E402
from models import fashion_mnist  # noqa: E402
from smof_onnx import api  # noqa: E402
from smof_onnx.passes.analysis.flops import count_cost  # noqa: E402
from smof_onnx.verify import compare_latency  # noqa: E402


def saved_tp_rows(model: str, target: float) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(str(ROOT / "bench" / "results" / "*.json"))):
        data = json.loads(Path(path).read_text())
        for r in data.get("rows", []) if isinstance(data, dict) else []:
            if (r.get("model") == model and str(r.get("method", "")).startswith("tp") and r.get("target") == target
                    and r.get("latency_b32")):
                rows.append({"file": Path(path).name, **r})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20", choices=sorted(fm.EPOCHS))
    ap.add_argument("--targets", default="0.5")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--finetune-epochs", type=int, default=6)
    ap.add_argument("--calib", type=int, default=4096)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--variants", default="new,old")
    args = ap.parse_args(argv)

    from smof_onnx.learn import settings as train_settings

    base = fm.trained(args.model)
    x, y = fm.calibration(args.calib, 0)
    x_test, y_test = fashion_mnist.load("test")
    base_acc = fm.ort_accuracy(base.onnx, x_test, y_test, threads=2)
    base_flops = count_cost(base.onnx).flops
    rows = []
    make = train_settings.make_settings
    for target in [float(t) for t in args.targets.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for variant in args.variants.split(","):
                old = variant == "old"
                kw = dict(target_flops=target, seed=seed, epochs=args.epochs, finetune_epochs=args.finetune_epochs,
                          threads=args.torch_threads, val_split=0, progress_bars=False)
                if old:
                    kw["no_latency"] = True
                start = time.perf_counter()
                with mock.patch.object(train_settings, "make_settings",
                                       lambda *a, **k: dataclasses.replace(make(*a, **k), calibrate_rings=not old)):
                    model, report = api.compress(base.onnx, data={fm.INPUT: x, "labels": y}, method="smof", **kw)
                wall = time.perf_counter() - start
                acc = fm.ort_accuracy(model, x_test, y_test, threads=2)
                cmp = compare_latency(base.onnx, model, threads=2, batch=32, budget_s=4.0)
                method = report.get("method", {})
                lat = method.get("settings", method).get("latency", {}) if isinstance(method, dict) else {}
                kernels = [f"{c['name']} {'x'.join(map(str, c['kernel_after']))}"
                           for c in method.get("choices", []) if c.get("kernel_after") != c.get("kernel_before")]
                row = {"target": target, "seed": seed, "variant": "previous default" if old else "new default",
                       "accuracy": acc, "flops_ratio": count_cost(model).flops / base_flops, "speedup_b32": cmp.speedup,
                       "self_ratio": cmp.self_ratio, "kernels_cut": kernels, "latency": lat, "wall_s": round(wall, 1)}
                rows.append(row)
                print(json.dumps(row, default=str), file=sys.stderr, flush=True)

    print(f"\n{args.model} (original {100 * base_acc:.2f}%), {args.epochs} + {args.finetune_epochs} epochs, "
          f"{args.calib} images, torch threads {args.torch_threads}\n")
    print("| target | seed | variant | acc % | drop | FLOPs | b32 speedup | realised | rings cut | "
          "predicted / measured time | wall s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        lat = r["latency"] or {}
        pm = (f"{lat['predicted_ratio']:.3f} / {lat['measured_ratio']:.3f}" if "predicted_ratio" in lat
              else lat.get("source", "-"))
        print(f"| {r['target']} | {r['seed']} | {r['variant']} | {100 * r['accuracy']:.2f} | "
              f"{100 * (base_acc - r['accuracy']):.2f} | {r['flops_ratio']:.3f} | {r['speedup_b32']:.2f}x "
              f"({r['self_ratio']:.2f}) | {r['speedup_b32'] * r['flops_ratio']:.2f} | {len(r['kernels_cut'])} | {pm} | "
              f"{r['wall_s']:.0f} |")
    for target in sorted({r["target"] for r in rows}):
        for r in saved_tp_rows(args.model, target):
            sp = r["latency_b32"]["speedup"]
            print(f"| {target} | saved | {r['method']} ({r['file']}) | {100 * r['accuracy']:.2f} | - | "
                  f"{r['flops_ratio']:.3f} | {sp:.2f}x | {sp * r['flops_ratio']:.2f} | 0 | - | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

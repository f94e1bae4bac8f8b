"""smof on the embedded default model (ResNet-20, Fashion-MNIST): one row per run.

    python bench/smof_default.py [--targets 0.5,0.3] [--calib 4096] [--set key=value ...]
                                 [--latency] [--threads N]

Each run is ``smof_onnx.api.compress(models/default/resnet20_fmnist.onnx, data=<the first
--calib Fashion-MNIST training images + labels>, method="smof", target_flops=F, val_split=0,
**settings)``; accuracy on the 10k test images under ONNX Runtime, FLOPs of the cut model,
speedup at batch 32 with 2 threads against the original (self-vs-self ratio in parentheses),
compress wall time. ``--set`` passes method options (``--set finetune_epochs=10``) and
``--set bn=0`` switches off the train-mode batch normalisation (``TrainSettings.batchnorm``).
The rows go to stdout as markdown and to ``bench/out/smof-default-<time>.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import onnx  # noqa: E402

import fmnist_models as fm  # noqa: E402
from models import fashion_mnist  # noqa: E402
from smof_onnx.passes.analysis.flops import count_cost  # noqa: E402
from smof_onnx import api  # noqa: E402
from smof_onnx.verify import compare_latency  # noqa: E402

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
    ap.add_argument("--targets", default="0.5,0.3")
    ap.add_argument("--calib", type=int, default=4096)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--latency", action="store_true", help="use --target-latency F instead of FLOPs")
    ap.add_argument("--no-speed", action="store_true", help="skip the latency measurement")
    args = ap.parse_args(argv)
    options = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    bn = bool(options.pop("bn", 1))

    x_train, y_train = fashion_mnist.load("train")
    x_test, y_test = fashion_mnist.load("test")
    data = {"input": x_train[:args.calib], "labels": y_train[:args.calib]}
    original = onnx.load(MODEL)
    base = fm.ort_accuracy(original, x_test, y_test, threads=2)
    base_flops = count_cost(original).flops
    rows = []
    print(f"original: {100 * base:.2f}%  settings {options}  bn={bn}", file=sys.stderr)
    from smof_onnx.learn import train

    for target in [float(t) for t in args.targets.split(",")]:
        kw = dict(options)
        if args.latency:
            kw.update(target_flops=1.0, target_latency=target)
        else:
            kw["target_flops"] = target
        start = time.perf_counter()
        make = train.make_settings
        with mock.patch.object(train, "make_settings",
                               lambda *a, **k: dataclasses.replace(make(*a, **k), batchnorm=bn)):
            model, report = api.compress(original, data=data, method="smof", val_split=0, **kw)
        wall = time.perf_counter() - start
        acc = fm.ort_accuracy(model, x_test, y_test, threads=2)
        row = {"target": target, "latency_target": args.latency, "settings": options, "bn": bn,
               "accuracy": acc, "drop_points": 100 * (base - acc), "flops_ratio": count_cost(model).flops / base_flops,
               "wall_s": round(wall, 1), "method": report.get("method", {})}
        if not args.no_speed:
            cmp = compare_latency(original, model, threads=2, batch=32, budget_s=8.0)
            row["speedup_b32"], row["self_ratio"] = cmp.speedup, cmp.self_ratio
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "method"}), file=sys.stderr)

    print("| target | settings | acc % | drop | FLOPs | b32 speedup | wall s |\n|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        sp = f"{r['speedup_b32']:.2f}x ({r['self_ratio']:.2f})" if "speedup_b32" in r else "-"
        label = ("latency " if r["latency_target"] else "") + f"{r['target']:g}"
        print(f"| {label} | {r['settings'] or 'defaults'}{'' if r['bn'] else ', bn off'} | {100 * r['accuracy']:.2f} | "
              f"{r['drop_points']:.2f} | {r['flops_ratio']:.3f} | {sp} | {r['wall_s']:.0f} |")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"smof-default-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"command": sys.argv, "original_accuracy": base, "rows": rows}, indent=1, default=str))
    print(f"\n(original {100 * base:.2f}%; rows in {path.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

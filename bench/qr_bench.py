"""QR (CHaPR) channel pruning on trained Fashion-MNIST models, next to onnxsim's training-free pruners.

    python bench/qr_bench.py [--models resnet20,vgg] [--targets 0.5,0.3] [--calib 1024]
                             [--threads 1] [--speed] [--memory] [--train-only]

Models: the embedded default ResNet-20 (``models/default/resnet20_fmnist.onnx``, written by
``models/train_fmnist.py``) when present, else one trained here with the same recipe; and a
VGG-style net (``models.zoo_nets.VGG`` with one input channel) trained here. Trained ONNX files
are cached under ``$SMOF_CACHE/fmnist`` (default ``~/.cache/smof-onnx/fmnist``).

Rows per model and FLOPs target: the original; qr with residual handling ``on`` and ``off``
(no fine-tune), and ``on`` with kept channel counts rounded to multiples of 8 (``x8``); onnxsim 0.8.1 ``apply_structured_pruning`` (filter L2 norm, global) and
``apply_structured_wanda_pruning`` (|W| x input-activation norm, calibrated on the same data),
each with the sparsity found by bisection so that the cut model's counted FLOPs are at or just
under the target. Every pruned model goes through the same cut (``smof_onnx.passes.pipeline.cut``);
accuracy is on the 10k test images, latency by ``smof_onnx.verify.measure_latency``.

``--speed`` times qr on ResNet-20 with 1024 calibration images (goal < 60 s);
``--memory`` runs qr on a ResNet-50-size model at 224x224 with 256 random images in a child
process and reports its peak RSS (goal < 4 GB).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

import fmnist_models as fm  # noqa: E402
from models import fashion_mnist  # noqa: E402
from models.cache import cache_root  # noqa: E402

FMNIST_CACHE = cache_root() / "fmnist"
DEFAULT_RESNET = ROOT / "models" / "default" / "resnet20_fmnist.onnx"
INPUT = "input"


# ----------------------------------------------------------------------------- trained models

def _train(kind: str, epochs: int, seed: int = 0):
    """Train ``kind`` ('resnet20' or 'vgg', this bench's own VGG) with :func:`fmnist_models.fit`."""
    import torch

    from models import train_fmnist
    from models.zoo_nets import VGG

    torch.manual_seed(seed)
    model = train_fmnist.build_model(seed) if kind == "resnet20" else VGG(in_ch=1, spatial=3)
    lr = 0.2 if kind == "resnet20" else 0.05
    return fm.fit(model, epochs, lr, seed, 128, kind, lambda msg: print(msg, flush=True))


def _export(model, path: Path) -> None:
    proto = fm.export_onnx(model)
    onnx.checker.check_model(proto, full_check=True)
    fm.atomic_write(path, lambda t: onnx.save(proto, t))


def trained_model(kind: str, epochs: int = 3) -> tuple[onnx.ModelProto, str]:
    """(model, where it came from); trains and caches it on first use."""
    if kind == "resnet20" and DEFAULT_RESNET.exists():
        return onnx.load(str(DEFAULT_RESNET)), str(DEFAULT_RESNET.relative_to(ROOT))
    path = FMNIST_CACHE / f"{kind}_fmnist_e{epochs}.onnx"
    if not path.exists():
        import torch

        torch.set_num_threads(1)
        print(f"training {kind} for {epochs} epochs (cached at {path})", flush=True)
        _export(_train(kind, epochs), path)
    return onnx.load(str(path)), str(path)


# ----------------------------------------------------------------------------- measurements

SHAPE = {INPUT: [1, 1, 28, 28]}


def _cut(model: onnx.ModelProto) -> onnx.ModelProto:
    from smof_onnx.passes import pipeline
    from smof_onnx.passes.graph import to_graph, to_model

    return to_model(pipeline.cut(to_graph(model), SHAPE).graph)


def _cost(model: onnx.ModelProto):
    from smof_onnx.passes.analysis.flops import count_cost

    return count_cost(model, SHAPE)


def accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, threads: int, batch: int = 1000) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i:i + batch]})[0].argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).mean())


def latency_ms(model: onnx.ModelProto, threads: int, batch: int, budget: float) -> float:
    from smof_onnx.verify import measure_latency

    return measure_latency(model, {INPUT: [batch, 1, 28, 28]}, threads=threads, batch=batch, budget_s=budget).median_ms


def onnxsim_at(kind: str, model: onnx.ModelProto, target_ratio: float, base_flops: int, calib: list[dict],
               global_sparsity: bool, iters: int = 9) -> tuple[onnx.ModelProto | None, float | None, str]:
    """The least onnxsim sparsity whose cut model meets the target (bisection); (model, sparsity, note)."""
    import onnxsim.pruning as P

    def prune(sp: float) -> onnx.ModelProto:
        if kind == "l2":
            out = P.apply_structured_pruning(model, sparsity=sp, global_sparsity=global_sparsity)
        else:
            out = P.apply_structured_wanda_pruning(model, calibration_data=calib, num_samples=len(calib),
                                                   sparsity=sp, global_sparsity=global_sparsity)
        return _cut(out)

    lo, hi, best = 0.0, 0.99, None
    top = prune(hi)
    if _cost(top).flops > target_ratio * base_flops:
        return None, None, f"sparsity 0.99 still gives {_cost(top).flops / base_flops:.3f} FLOPs"
    best = (top, hi)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        m = prune(mid)
        if _cost(m).flops <= target_ratio * base_flops:
            hi, best = mid, (m, mid)
        else:
            lo = mid
    return best[0], best[1], ""


def row(label: str, model: onnx.ModelProto | None, base, x, y, args, extra: str = "", seconds=None) -> dict:
    if model is None:
        return {"method": label, "note": extra}
    cost = _cost(model)
    r = {"method": label, "acc": accuracy(model, x, y, args.threads), "flops": cost.flops,
         "flops_ratio": cost.flops / base.flops, "params": cost.params,
         "latency_ms": latency_ms(model, args.threads, args.batch, args.budget), "note": extra}
    if seconds is not None:
        r["seconds"] = seconds
    print(f"    {label:<34} acc {r['acc']:.4f} flops {r['flops_ratio']:.3f} {r['latency_ms']:.2f} ms {extra}",
          flush=True)
    return r


def bench_model(kind: str, args) -> dict:
    from smof_onnx.methods.qr import QRConfig, run

    model, source = trained_model(kind)
    x_train, _ = fashion_mnist.load("train")
    x_test, y_test = fashion_mnist.load("test")
    x_test, y_test = x_test[:args.test_images], y_test[:args.test_images]
    idx = np.sort(np.random.default_rng(0).choice(len(x_train), args.calib, replace=False))
    calib = {INPUT: x_train[idx]}
    base = _cost(model)
    print(f"{kind}: {source}", flush=True)
    rows = [row("original", model, base, x_test, y_test, args)]
    osim_calib = [{INPUT: x_train[idx[i:i + 64]]} for i in range(0, min(len(idx), 512), 64)]
    for target in args.targets:
        for residual, multiple in (("on", 1), ("off", 1), ("on", 8)):
            t0 = time.perf_counter()
            res = run(model, calib, QRConfig(target_flops=target, residual=residual, channel_multiple=multiple,
                                             threads=args.threads))
            secs = time.perf_counter() - t0
            note = "" if res.settings["target_met"] else "target NOT met"
            label = f"qr residual={residual}{' x8' if multiple > 1 else ''} @{target}"
            rows.append(row(label, _cut(res.model), base, x_test, y_test, args, note, round(secs, 1)))
        rows.append({"method": f"qr + finetune @{target}",
                     "note": "not run: the learning stage has no finetune() entry for qr results yet"})
        for kind_o in ("l2", "wanda"):
            for glob in (False, True):
                label = f"onnxsim {kind_o}{' global' if glob else ''} @{target}"
                m, sp, note = onnxsim_at(kind_o, model, target, base.flops, osim_calib, glob)
                rows.append(row(label, m, base, x_test, y_test, args, note or f"sparsity {sp:.3f}"))
    return {"model": kind, "source": source, "calib_images": args.calib, "test_images": len(x_test), "rows": rows}


def print_table(result: dict) -> None:
    rows = result["rows"]
    base = rows[0]
    print(f"\n### {result['model']} ({result['source']}; {result['calib_images']} calibration images, "
          f"accuracy on {result['test_images']} test images)\n")
    print("| method | accuracy | drop | FLOPs | params | latency ms | qr s | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "acc" not in r:
            print(f"| {r['method']} | - | - | - | - | - | - | {r['note']} |")
            continue
        print(f"| {r['method']} | {r['acc']:.4f} | {base['acc'] - r['acc']:+.4f} | {r['flops_ratio']:.3f} "
              f"({r['flops'] / 1e6:.2f} M) | {r['params'] / 1e3:.1f} k | {r['latency_ms']:.2f} | "
              f"{r.get('seconds', '')} | {r['note']} |")


def speed(args) -> dict:
    from smof_onnx.methods.qr import QRConfig, run

    model, source = trained_model("resnet20")
    x_train, _ = fashion_mnist.load("train")
    idx = np.sort(np.random.default_rng(0).choice(len(x_train), 1024, replace=False))
    t0 = time.perf_counter()
    res = run(model, {INPUT: x_train[idx]}, QRConfig(target_flops=0.5, threads=args.threads))
    wall = time.perf_counter() - t0
    out = {"model": source, "images": 1024, "wall_s": round(wall, 1), "stages_s": res.settings["seconds"],
           "threads": args.threads}
    print(f"\nqr on ResNet-20, 1024 calibration images: {wall:.1f} s wall (goal < 60 s); "
          f"stages {res.settings['seconds']}", flush=True)
    return out


_MEMORY_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, onnx
from smof_onnx.methods.qr import QRConfig, run
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = onnx.load(sys.argv[2])
x = np.random.default_rng(0).standard_normal((256, 3, 224, 224)).astype(np.float32)
t0 = time.perf_counter()
res = run(model, {model.graph.input[0].name: x}, QRConfig(target_flops=0.5, batch_size=int(sys.argv[3]),
          max_positions=int(sys.argv[4]), reconstruct=sys.argv[5], threads=int(sys.argv[6])))
print(json.dumps({"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_imports_mb": rss0 / 1024, "torch": "torch" in sys.modules,
    "stages_s": res.settings["seconds"], "flops_ratio": res.settings["flops_ratio"],
    "target_met": res.settings["target_met"]}))
"""


def memory(args) -> dict:
    path = cache_root() / "bench" / "resnet50_size.onnx"
    if not path.exists():
        from models import zoo

        zoo.export_resnet50(path)
    cmd = [sys.executable, "-c", _MEMORY_CHILD, str(ROOT), str(path), str(args.mem_batch), str(args.mem_positions),
           args.mem_reconstruct, str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if proc.returncode != 0:
        raise SystemExit(f"memory child failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(images=256, size="224x224", batch_size=args.mem_batch, max_positions=args.mem_positions,
               reconstruct=args.mem_reconstruct)
    print(f"\nqr on ResNet-50-size, 256 images 224x224: peak RSS {out['peak_rss_mb']:.0f} MB (goal < 4096 MB), "
          f"{out['wall_s']} s, {json.dumps(out)}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,vgg")
    ap.add_argument("--targets", default="0.5,0.3")
    ap.add_argument("--calib", type=int, default=1024)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32, help="latency batch")
    ap.add_argument("--budget", type=float, default=1.5, help="latency seconds per model")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--mem-batch", type=int, default=64)
    ap.add_argument("--mem-positions", type=int, default=2048)
    ap.add_argument("--mem-reconstruct", default="parallel")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    args.targets = [float(t) for t in args.targets.split(",")]
    models = [m for m in args.models.split(",") if m]
    if args.train_only:
        for m in models:
            print(trained_model(m)[1])
        return 0
    out = {"results": [bench_model(m, args) for m in models]}
    for r in out["results"]:
        print_table(r)
    if args.speed:
        out["speed"] = speed(args)
    if args.memory:
        out["memory"] = memory(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

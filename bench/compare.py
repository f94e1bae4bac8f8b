"""smof against its peers on Fashion-MNIST: one command, one table (issues 3 and 4).

    python bench/compare.py [--models resnet20,vgg,mobilenet_v2] [--targets 0.5,0.3]
                            [--methods smof,smof_channel,...] [--calib 4096] [--epochs E]
                            [--finetune-epochs F] [--latency-budget 3] [--method-seeds 0,1,2] [--quick]

Models: :mod:`bench.fmnist_models` (trained once, cached): each method starts from the same
trained ONNX export (Torch-Pruning from the torch module it was exported from).

Rows per model (``original`` once) and FLOPs target:

==============  ===========================================================================
smof            ``compress(method="smof")``: kernel-border + channel gates (issue 4)
smof_channel    the same with ``kernel=False`` (``--no-kernel``): channels only
smof_kernel     the same with ``channel=False`` (``--no-channel``): kernel borders only
smof_outputs    ``smof`` with ``feature_distill=0``: output distillation only, no stage outputs
qr              ``compress(method="qr")``: CHaPR pivoted QR + least squares, no training
qr_ft           ``qr`` with ``finetune_epochs=F``
l2              ``compress(method="l2")`` data-free (filter L2 norm, kernel-border energy)
l2_ft           ``l2`` with the calibration data: fine-tuned ``F`` epochs
tp              Torch-Pruning (MetaPruner, GroupMagnitudeImportance(p=2), uniform ratio found by
                bisection on the exported model's counted FLOPs), fine-tuned with smof's recipe
                for smof's search + fine-tune epochs on the same images and labels, exported
tp_r8           ``tp`` with ``round_to=8`` (channel counts multiples of 8)
onnxsim         onnxsim ``apply_structured_pruning`` (data-free, l2), sparsity by bisection
onnxsim_wanda   onnxsim ``apply_structured_wanda_pruning`` on the calibration images
3d              ``compress(method="3d")``: depth, width and resolution planned together
3d_depth        ``3d`` with ``dims="depth"``: residual blocks only
3d_resolution   ``3d`` with ``dims="resolution"``: the in-graph input resolution only
==============  ===========================================================================

Every learned method gets the same ``--calib`` training images (seeded draw from the 60k train
split, with labels) and ``val_split=0``. Columns: accuracy on the 10k test images under ONNX
Runtime and its drop in points against the original; FLOPs ratio (``count_cost``, batch 1) and
params of the result; ONNX Runtime latency at batch 1 and 32 with 2 threads, measured by
:func:`smof_onnx.verify.compare_latency` against the original (median, spinning off, rotated
order) with the speedup and the self-vs-self ratio (1.00 +- 0.03 means the machine was quiet);
compress wall time (for the peers: the FLOPs bisection plus fine-tune). A method that fails
(missing, not implemented, refused) is a row with its error; the table is always printed.
``--method-seeds 0,1,2`` runs every learned method once per seed (smof's ``seed``, the peers'
fine-tune seed; the base model and the calibration draw stay at ``--seed``) and adds a second
table with each method's mean accuracy and its spread over the seeds: single runs of the same
method differ by up to half a point here, more than some of the gaps between methods.
The table is markdown on stdout; the rows, settings and environment go to
``bench/out/compare-<time>.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

import fmnist_models as fm  # noqa: E402
import peers  # noqa: E402
from models import fashion_mnist  # noqa: E402
from smof_onnx.passes.analysis.flops import count_cost  # noqa: E402

ALL_METHODS = ("smof", "smof_channel", "smof_kernel", "smof_outputs", "smof_fast", "qr", "qr_ft", "l2", "l2_ft", "tp", "tp_r8", "onnxsim",
               "onnxsim_wanda", "3d", "3d_depth", "3d_resolution")
OUT_DIR = ROOT / "bench" / "out"
# smof_fast adds --target-latency TARGET / SPEED_SHARE: the speed goal (1.8x at 0.5 FLOPs)
# asks the latency to fall by at least 0.9 of the FLOPs reduction's factor.
SPEED_SHARE = 0.9


@dataclasses.dataclass
class Ctx:
    kind: str
    base: fm.TrainedModel
    target: float
    x: np.ndarray           # calibration images
    y: np.ndarray           # their labels
    args: argparse.Namespace
    seed: int = 0           # the method's seed (smof's seed, the peers' fine-tune seed)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- methods

def _calib(ctx: Ctx):
    from smof_onnx.data import CalibrationData

    return CalibrationData({fm.INPUT: ctx.x}, ctx.y, f"fashion-mnist train ({len(ctx.x)} images)")


def _train_options(ctx: Ctx) -> dict:
    a = ctx.args
    opts: dict[str, Any] = {"batch_size": a.batch_size, "val_split": 0.0, "progress_bars": a.progress}
    if a.epochs is not None:
        opts["epochs"] = a.epochs
    if a.finetune_epochs is not None:
        opts["finetune_epochs"] = a.finetune_epochs
    if a.lr is not None:
        opts["lr"] = a.lr
    return opts


def _compress(ctx: Ctx, method: str, data: bool = True, **options) -> tuple[onnx.ModelProto, dict]:
    from smof_onnx.api import compress

    model, report = compress(ctx.base.onnx, data=_calib(ctx) if data else None, target_flops=ctx.target,
                             method=method, seed=ctx.seed, **options)
    return model, report.get("method", {}) | {"quality_val": report.get("quality")}


def effective_epochs(ctx: Ctx) -> tuple[int, int]:
    """(search, fine-tune) epochs smof runs with these options: what the peers' fine-tune gets."""
    from smof_onnx.learn.train import make_settings
    from smof_onnx.methods import config_from_options

    opts = {k: v for k, v in _train_options(ctx).items() if k in ("batch_size", "epochs", "finetune_epochs", "lr")}
    s = make_settings(config_from_options(target_flops=ctx.target, **opts), len(ctx.x))
    return s.search_epochs, s.finetune_epochs


def _finetune_cfg(ctx: Ctx) -> peers.FinetuneConfig:
    search, ft = effective_epochs(ctx)
    lr = ctx.args.lr if ctx.args.lr is not None else peers.FinetuneConfig.lr
    return peers.FinetuneConfig(epochs=search + ft, batch_size=ctx.args.batch_size, lr=lr, seed=ctx.seed)


def _tp(ctx: Ctx, round_to: int | None) -> tuple[onnx.ModelProto, dict]:
    import torch

    torch.manual_seed(ctx.seed)
    return peers.torch_pruning(ctx.base.module, ctx.target, export=fm.export_onnx, x=ctx.x, y=ctx.y,
                               finetune_cfg=_finetune_cfg(ctx), round_to=round_to,
                               log=log if ctx.args.progress else None)


def _ft_epochs(ctx: Ctx) -> int:
    return effective_epochs(ctx)[1]


METHOD_RUNNERS: dict[str, Callable[[Ctx], tuple[onnx.ModelProto, dict]]] = {
    "smof": lambda c: _compress(c, "smof", **_train_options(c)),
    "smof_channel": lambda c: _compress(c, "smof", kernel=False, **_train_options(c)),
    "smof_kernel": lambda c: _compress(c, "smof", channel=False, **_train_options(c)),
    "smof_outputs": lambda c: _compress(c, "smof", feature_distill=0.0, **_train_options(c)),
    "smof_fast": lambda c: _compress(c, "smof", target_latency=min(1.0, c.target / SPEED_SHARE), **_train_options(c)),
    "qr": lambda c: _compress(c, "qr", batch_size=c.args.batch_size, finetune_epochs=0),
    "qr_ft": lambda c: _compress(c, "qr", batch_size=c.args.batch_size, finetune_epochs=_ft_epochs(c)),
    "l2": lambda c: _compress(c, "l2", data=False),
    "l2_ft": lambda c: _compress(c, "l2", **(_train_options(c) | {"finetune_epochs": _ft_epochs(c)})),
    "tp": lambda c: _tp(c, None),
    "tp_r8": lambda c: _tp(c, 8),
    "onnxsim": lambda c: peers.onnxsim_structured(c.base.onnx, c.target),
    "onnxsim_wanda": lambda c: peers.onnxsim_wanda(c.base.onnx, c.target, c.x[:c.args.wanda_images]),
    "3d": lambda c: _compress(c, "3d", **_train_options(c)),
    "3d_depth": lambda c: _compress(c, "3d", dims="depth", **_train_options(c)),
    "3d_resolution": lambda c: _compress(c, "3d", dims="resolution", **_train_options(c)),
}


# ----------------------------------------------------------------------------- measuring

def measure(model: onnx.ModelProto, original: onnx.ModelProto, x_test: np.ndarray, y_test: np.ndarray,
            args: argparse.Namespace) -> dict:
    from smof_onnx.verify import compare_latency

    c0, c1 = count_cost(original, None), count_cost(model, None)
    row = {"accuracy": fm.ort_accuracy(model, x_test, y_test), "flops": c1.flops, "flops_ratio": c1.flops / c0.flops,
           "params": c1.params, "params_ratio": c1.params / c0.params}
    for batch in args.batches:
        lat = compare_latency(original, model, threads=args.threads, batch=batch, budget_s=args.latency_budget)
        row[f"latency_b{batch}"] = lat.to_dict()
    return row


def _short(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {msg}"[:300]


def run_row(name: str, ctx: Ctx, x_test, y_test) -> dict:
    row: dict[str, Any] = {"model": ctx.kind, "target": ctx.target, "method": name, "seed": ctx.seed}
    log(f"[{ctx.kind} @ {ctx.target:g}] {name} (seed {ctx.seed}) ...")
    start = time.perf_counter()
    try:
        model, settings = METHOD_RUNNERS[name](ctx)
    except Exception as exc:  # a missing or failing method is a row, never a crash of the table
        row.update(error=_short(exc), compress_s=round(time.perf_counter() - start, 2))
        if ctx.args.traceback:
            traceback.print_exc()
        log(f"    failed: {row['error']}")
        return row
    row["compress_s"] = round(time.perf_counter() - start, 2)
    row["settings"] = _jsonable(settings)
    try:
        row.update(measure(model, ctx.base.onnx, x_test, y_test, ctx.args))
    except Exception as exc:
        row["error"] = "measuring: " + _short(exc)
    if ctx.args.save_models:
        d = OUT_DIR / "models"
        d.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(d / f"{ctx.kind}-{ctx.target:g}-{name}-s{ctx.seed}.onnx"))
    log(f"    acc {row.get('accuracy', float('nan')):.4f} flops {row.get('flops_ratio', float('nan')):.3f} "
        f"in {row['compress_s']:.1f}s")
    return row


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


# ----------------------------------------------------------------------------- the table

def _fmt_lat(row: dict, batch: int) -> tuple[str, str]:
    # Both medians of the one comparison: the machine is shared, so the original's latency drifts
    # between rows, and only a pair timed side by side can be compared.
    lat = row.get(f"latency_b{batch}")
    if not lat:
        return "", ""
    return f"{lat['before']:.2f} -> {lat['after']:.2f}", f"{lat['speedup']:.2f}x ({lat['self_ratio']:.2f})"


def _original_accuracy(rows: list[dict]) -> dict[str, float | None]:
    return {r["model"]: r.get("accuracy") for r in rows if r["method"] == "original"}


def table(rows: list[dict], batches: list[int]) -> str:
    base_acc = _original_accuracy(rows)
    seeded = len({r.get("seed", 0) for r in rows}) > 1
    head = ["model", "target", "method"] + (["seed"] if seeded else []) + ["acc %", "drop pts", "FLOPs", "params"]
    for b in batches:
        head += [f"b{b} ms orig -> this", f"b{b} speedup (self)"]
    head += ["compress s", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r["model"], "-" if r["method"] == "original" else f"{r['target']:g}", r["method"]]
        if seeded:
            cells.append("" if r["method"] == "original" else str(r.get("seed", 0)))
        if "accuracy" in r:
            ref = base_acc.get(r["model"])
            drop = "" if ref is None or r["method"] == "original" else f"{100 * (ref - r['accuracy']):.2f}"
            cells += [f"{100 * r['accuracy']:.2f}", drop, f"{r['flops_ratio']:.3f}", f"{r['params']:,}"]
        else:
            cells += ["", "", "", ""]
        for b in batches:
            cells += list(_fmt_lat(r, b))
        cells.append("" if r["method"] == "original" else f"{r.get('compress_s', 0):.1f}")
        cells.append(_note(r))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_summary(rows: list[dict], batches: Sequence[int] = (32,)) -> str:
    """Mean accuracy per model, target and method over its seeds, with the spread (min-max), the
    mean FLOPs and the mean speedup at each of ``batches``; empty when every method ran one seed."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["method"] != "original" and "accuracy" in r:
            groups.setdefault((r["model"], r["target"], r["method"]), []).append(r)
    if all(len(g) < 2 for g in groups.values()):
        return ""
    base_acc = _original_accuracy(rows)
    lines = ["| model | target | method | seeds | mean acc % | mean drop pts | min - max acc % | mean FLOPs | "
             + "".join(f"mean b{b} speedup | " for b in batches).rstrip(),
             "|---|---|---|---|---|---|---|---|" + "---|" * len(batches)]
    for (model, target, method), g in groups.items():
        acc = np.array([100 * r["accuracy"] for r in g])
        ref = base_acc.get(model)
        drop = "" if ref is None else f"{100 * ref - acc.mean():.2f}"
        speeds = []
        for b in batches:
            speed = [r[f"latency_b{b}"]["speedup"] for r in g if r.get(f"latency_b{b}")]
            speeds.append(f"{np.mean(speed):.2f}x" if speed else "")
        lines.append(f"| {model} | {target:g} | {method} | {len(g)} | {acc.mean():.2f} | {drop} | "
                     f"{acc.min():.2f} - {acc.max():.2f} | {np.mean([r['flops_ratio'] for r in g]):.3f} | "
                     + "".join(f"{c} | " for c in speeds).rstrip())
    return "\n".join(lines)


def _note(r: dict) -> str:
    if r.get("error"):
        return "ERROR " + r["error"].replace("|", "/")[:160]
    s = r.get("settings") or {}
    notes = []
    if s.get("reached") is False:
        notes.append("target NOT reached")
    if "pruning_ratio" in s:
        notes.append(f"ratio {s['pruning_ratio']:.3f}, ft {s['finetune']['epochs']} ep")
    if "sparsity" in s:
        notes.append(f"sparsity {s['sparsity']:.3f}")
    if r["method"].startswith("smof") and "search_epochs" in s:
        notes.append(f"{s['search_epochs']}+{s.get('finetune_epochs')} ep")
    elif r["method"] in ("l2_ft", "qr_ft"):
        notes.append(f"ft {s.get('finetune_epochs')} ep")
    if "flops_ratio" in r and r["method"] != "original" and r["flops_ratio"] > r["target"] + 0.01:
        notes.append("over target")
    return "; ".join(notes)


# ----------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="smof vs Torch-Pruning / onnxsim / qr / l2 on Fashion-MNIST")
    ap.add_argument("--models", default=",".join(fm.KINDS))
    ap.add_argument("--targets", default="0.5,0.3")
    ap.add_argument("--methods", default=",".join(ALL_METHODS),
                    help=f"comma list out of {','.join(ALL_METHODS)} (the original is always measured)")
    ap.add_argument("--calib", type=int, default=4096, help="calibration / training images (train split)")
    ap.add_argument("--epochs", type=int, default=None, help="smof search epochs (default: smof's own)")
    ap.add_argument("--finetune-epochs", type=int, default=None, help="smof fine-tune epochs (default: smof's)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="base models, calibration draw and the methods' seed")
    ap.add_argument("--method-seeds", default=None,
                    help="comma-separated seeds: run every method once per seed (base model and data stay at --seed)")
    ap.add_argument("--base-epochs", type=int, default=None, help="training epochs of the base models")
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--wanda-images", type=int, default=512, help="calibration images for onnxsim wanda")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for the latency columns")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--batches", default="1,32", help="latency batch sizes")
    ap.add_argument("--latency-budget", type=float, default=3.0, help="seconds per latency comparison")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: resnet20 at 0.5, 256 images, 1+1 epochs, 2000 test images, short timing")
    ap.add_argument("--progress", action="store_true", help="show the methods' progress bars")
    ap.add_argument("--traceback", action="store_true", help="print the traceback of a failing method")
    ap.add_argument("--save-models", action="store_true", help="write every result to bench/out/models/")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/out/compare-<time>.json)")
    ap.add_argument("--table-from", type=Path, nargs="+", default=None,
                    help="only print the table of saved JSON run(s); several runs of the same models and base "
                         "models (e.g. other --method-seeds) are merged into one table")
    args = ap.parse_args(argv)
    if args.quick:
        given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
        quick = {"--models": ("models", "resnet20"), "--targets": ("targets", "0.5"), "--calib": ("calib", 256),
                 "--epochs": ("epochs", 1), "--finetune-epochs": ("finetune_epochs", 1),
                 "--test-images": ("test_images", 2000), "--latency-budget": ("latency_budget", 0.5),
                 "--wanda-images": ("wanda_images", 128)}
        for flag, (dest, value) in quick.items():
            if flag not in given:
                setattr(args, dest, value)
    args.models = [m for m in args.models.split(",") if m]
    args.targets = [float(t) for t in args.targets.split(",") if t]
    args.methods = [m for m in args.methods.split(",") if m and m != "original"]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.method_seeds = ([int(s) for s in args.method_seeds.split(",") if s] if args.method_seeds
                         else [args.seed])
    unknown = sorted(set(args.methods) - set(ALL_METHODS)) + sorted(set(args.models) - set(fm.KINDS))
    if unknown:
        ap.error(f"unknown method(s) / model(s): {unknown}")
    return args


def merge_runs(runs: list[dict]) -> tuple[list[str], list[dict]]:
    """(commands, rows) of saved runs: one ``original`` row per model and one row per model,
    target, method and seed (the first run's; rows of runs before ``--method-seeds`` carry the
    run's ``--seed``).
    Runs whose base models differ (another ``--seed`` or ``--base-epochs``) are refused: their
    accuracies are not comparable."""
    bases: dict[str, Any] = {}
    rows: list[dict] = []
    seen: set[tuple] = set()
    for run in runs:
        for kind, info in run.get("base_models", {}).items():
            if bases.setdefault(kind, info) != info:
                raise SystemExit(f"--table-from: the runs trained different base {kind} models; not merged")
        for r in run["rows"]:
            r = {"seed": run.get("args", {}).get("seed", 0), **r}
            key = (r["model"],) if r["method"] == "original" else (r["model"], r["target"], r["method"], r["seed"])
            if key not in seen:
                seen.add(key)
                rows.append(r)
    order = {k: i for i, k in enumerate(dict.fromkeys(r["model"] for r in rows))}
    rows.sort(key=lambda r: (order[r["model"]], r["method"] != "original", -r["target"], r.get("seed", 0)))
    return [run["command"] for run in runs], rows


def git_commit() -> str | None:
    """HEAD of the checkout, with ``+dirty`` when tracked files differ from it (a run made on
    uncommitted code says so); None outside a git checkout."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(args) -> dict:
    import onnxruntime

    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
           "ort_threads": args.threads, "torch_threads": args.torch_threads}
    for mod in ("torch", "torch_pruning", "onnxsim"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as exc:  # informative only
            env[mod] = f"unavailable ({type(exc).__name__})"
    try:
        env["loadavg"] = os.getloadavg()
    except OSError:
        pass
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table_from:
        commands, rows = merge_runs([json.loads(p.read_text()) for p in args.table_from])
        batches = [int(k[len("latency_b"):]) for k in rows[0] if k.startswith("latency_b")]
        summary = seed_summary(rows, batches)
        print("\n".join(f"`{c}`" for c in commands) + "\n\n" + table(rows, batches)
              + ("\n\n" + summary if summary else ""))
        return 0
    import torch

    torch.set_num_threads(args.torch_threads)
    command = "python bench/compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
    commit = git_commit()  # at the start: the code the run imports, whatever the checkout holds when it ends
    x_test, y_test = fashion_mnist.load("test")
    x_test, y_test = x_test[:args.test_images], y_test[:args.test_images]
    x_cal, y_cal = fm.calibration(args.calib, args.seed)
    rows: list[dict] = []
    bases: dict[str, dict] = {}
    started = time.perf_counter()
    for kind in args.models:
        base = fm.trained(kind, args.base_epochs, args.seed, log=log)
        bases[kind] = base.info
        log(f"[{kind}] original ...")
        orig = {"model": kind, "target": 1.0, "method": "original", "compress_s": 0.0}
        orig.update(measure(base.onnx, base.onnx, x_test, y_test, args))
        rows.append(orig)
        for target in args.targets:
            for seed in args.method_seeds:
                ctx = Ctx(kind, base, target, x_cal, y_cal, args, seed)
                for name in args.methods:
                    rows.append(run_row(name, ctx, x_test, y_test))
    total = time.perf_counter() - started
    text = table(rows, args.batches)
    summary = seed_summary(rows, args.batches)
    if summary:
        text += "\n\nOver the seeds " + ",".join(map(str, args.method_seeds)) + ":\n\n" + summary
    header = (f"`{command}`  \nFashion-MNIST, {len(x_test)} test images; {len(x_cal)} calibration images; "
              f"ONNX Runtime {args.threads} threads; latency speedups vs the original with self-vs-self ratio "
              f"in parentheses; total {total / 60:.1f} min")
    print(header + "\n\n" + text)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = args.out or OUT_DIR / f"compare-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    payload = {"command": command, "git_commit": commit,
               "args": _jsonable({k: v for k, v in vars(args).items() if k != "out"}),
               "environment": environment(args), "base_models": bases, "rows": _jsonable(rows),
               "total_seconds": round(total, 1), "table": text}
    out.write_text(json.dumps(payload, indent=1) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

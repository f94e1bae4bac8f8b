"""smof on the real PP-OCR cls, rec and det models from rendered, label-free calibration images.

    OMP_NUM_THREADS=1 python bench/ppocr_compress.py [--quick] [--cls-targets 0.5,0.3]
        [--rec-targets 0.7] [--det-targets 0.5] [--cls-lines 512] [--rec-lines 256]
        [--det-pages 128] [--det-size 256x256] [--cls-epochs 2,2] [--rec-epochs 1,1]
        [--det-epochs 1,1] [--cls-batch 32] [--rec-batch 16] [--det-batch 8] [--threads 1]
        [--method smof|qr]

``--*-epochs auto`` runs smof's default schedule (about 300 search and 600 fine-tune steps).

Each row is ``smof_onnx.api.compress(<rapidocr's model>, data=models.ppocr_calib.calibration(
kind, n), method=M, target_flops=F, val_split=0.2, epochs=E, finetune_epochs=E2,
batch_size=B, threads=T)`` (``--method``, default smof; ``qr`` gets no epochs: it trains
nothing unless asked): no labels, the compressor distils from the original model.

Columns: FLOPs ratio of the cut model (counted at the calibration shape), params before ->
after, the report's agreement on the held-out 20% (cls: top-1 agreement with the original;
det: max relative error of the probability map), then checks on fresh renderings (seed 1)
that the compressor never saw -- cls: orientation accuracy against the rendered truth,
original -> compressed; rec: the share of fresh lines whose greedy CTC decoding is the same
string as the original's, and the share of rendered characters read right before -> after; det: IoU of the text masks binarised at rapidocr's ``Det.thresh``
0.3, compressed vs original --, ONNX Runtime latency speedup at batch 1 on ``--threads``
(self-vs-self ratio of the original in parentheses, design 8) and compress wall time.
The defaults fit in well under 12 minutes on one busy core (6+6 cls epochs took 4.4 min per
target here: more epochs, much better agreement, see the report); ``--quick`` is a smoke run.
Rows go to stdout as markdown and to ``bench/out/ppocr-<time>.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from compare import git_commit  # noqa: E402
from models import ppocr, ppocr_calib  # noqa: E402
from smof_onnx import api  # noqa: E402
from smof_onnx.errors import SmofError  # noqa: E402
from smof_onnx.verify import compare_latency  # noqa: E402

DET_THRESH = 0.3  # rapidocr-onnxruntime 1.4.4 config.yaml, Det.thresh
FRESH_SEED = 1


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _predict(model: onnx.ModelProto, x: np.ndarray, threads: int, batch: int = 32) -> np.ndarray:
    sess = _session(model, threads)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def fresh_check(kind: str, original: onnx.ModelProto, cut: onnx.ModelProto, n: int, size: tuple[int, int],
                threads: int) -> dict:
    """What the rendered truth says about the compressed model on data it never saw."""
    if kind == "cls":
        d = ppocr_calib.text_lines(n, seed=FRESH_SEED)
        acc = [float(((_predict(m, d["x"], threads).argmax(1) == 1) == d["flipped"]).mean()) for m in (original, cut)]
        return {"orientation_accuracy_before": acc[0], "orientation_accuracy_after": acc[1], "samples": n}
    if kind == "rec":
        return _rec_check(original, cut, n, threads)
    x = ppocr_calib.pages(n, size, seed=FRESH_SEED)
    a = _predict(original, x, threads, batch=4) > DET_THRESH
    b = _predict(cut, x, threads, batch=4) > DET_THRESH
    return {"mask_iou": float((a & b).sum() / max(1, (a | b).sum())), "samples": n}


def _edits(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        diag, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (ca != cb))
    return row[-1]


def _rec_check(original: onnx.ModelProto, cut: onnx.ModelProto, n: int, threads: int) -> dict:
    d = ppocr_calib.text_lines(n, height=ppocr_calib.REC_SHAPE[1], width=ppocr_calib.REC_SHAPE[2],
                               seed=FRESH_SEED, flipped=0.0)
    chars = ppocr.rec_characters(original)
    before, after = (ppocr.ctc_decode(_predict(m, d["x"], threads), chars) for m in (original, cut))
    total = sum(len(t) for t in d["text"])
    read = [1 - sum(_edits(g, t) for g, t in zip(got, d["text"])) / total for got in (before, after)]
    return {"strings_match": float(np.mean([a == b for a, b in zip(before, after)])),
            "char_accuracy_before": read[0], "char_accuracy_after": read[1], "samples": n}


def run_one(kind: str, target: float, data: dict, shape: list[int], epochs: tuple[int, int], batch: int,
            threads: int, fresh_n: int, latency_s: float, method: str = "smof") -> dict:
    original = onnx.load(str(ppocr.ppocr_path(kind)))
    start = time.perf_counter()
    row = {"model": kind, "method": method, "target": target, "input_shape": shape, "calib": int(next(iter(data.values())).shape[0]),
           "epochs": list(epochs), "batch_size": batch, "threads": threads}
    try:
        # qr trains nothing by default: it gets only the options it reads
        schedule = dict(epochs=epochs[0], finetune_epochs=epochs[1]) if method == "smof" else {}
        cut, report = api.compress(original, data=data, method=method, target_flops=target, batch_size=batch,
                                   val_split=0.2, threads=threads, input_shapes={ppocr.INPUT_NAME: shape},
                                   progress_bars=False, **schedule)
    except SmofError as exc:  # a failed gate is a result to report, not a reason to lose the other rows
        row.update(wall_s=round(time.perf_counter() - start, 1), error=f"{type(exc).__name__}: {exc}")
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row
    row.update(wall_s=round(time.perf_counter() - start, 1))
    row |= {"flops": report["flops"], "params": report["params"], "verify": report["verify"],
            "quality": report["quality"],
            "fresh": fresh_check(kind, original, cut, fresh_n, tuple(shape[2:]), threads)}
    cmp = compare_latency(original, cut, input_shapes={ppocr.INPUT_NAME: shape}, threads=threads, batch=1,
                          budget_s=latency_s)
    row["latency"] = cmp.to_dict()
    print(json.dumps({k: row[k] for k in ("model", "method", "target", "wall_s", "flops", "quality", "fresh")}),
          file=sys.stderr, flush=True)
    return row


def _table(rows: list[dict]) -> str:
    lines = ["| model | method | target | FLOPs ratio | params | held-out agreement | fresh renderings | "
             "ORT b1 speedup (self) | compress s |",
             "|---|---|---:|---:|---:|---|---|---:|---:|"]
    for r in rows:
        shape = "x".join(str(d) for d in r["input_shape"][2:])
        if "error" in r:
            lines.append(f"| {r['model']} {shape} | {r['method']} | {r['target']:g} | - | - | FAILED: {r['error']} | - | - | "
                         f"{r['wall_s']:.0f} |")
            continue
        q, f, lat = r["quality"], r["fresh"], r["latency"]
        if r["model"] == "rec":
            agree = f"per-step top-1 {100 * q['top1_agreement']:.1f}% (n={q['samples']})"
            fresh = (f"same string {100 * f['strings_match']:.1f}%, characters {100 * f['char_accuracy_before']:.1f}% -> "
                     f"{100 * f['char_accuracy_after']:.1f}% (n={f['samples']})")
        elif r["model"] == "cls":
            agree = f"top-1 {100 * q['top1_agreement']:.1f}% (n={q['samples']})"
            fresh = (f"orientation {100 * f['orientation_accuracy_before']:.1f}% -> "
                     f"{100 * f['orientation_accuracy_after']:.1f}% (n={f['samples']})")
        else:
            agree = (f"rel RMS err {q['relative_rms_error']:.3f}, mask IoU {q['mask_iou']:.3f} @ {q['mask_threshold']:g} "
                     f"(n={q['samples']})")
            fresh = f"mask IoU {f['mask_iou']:.3f} @ {DET_THRESH} (n={f['samples']})"
        lines.append(f"| {r['model']} {shape} | {r['method']} | {r['target']:g} | {r['flops']['ratio']:.3f} | "
                     f"{r['params']['before'] / 1e3:.0f}k -> {r['params']['after'] / 1e3:.0f}k | {agree} | {fresh} | "
                     f"{lat['speedup']:.2f}x ({lat['self_ratio']:.2f}) | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def _pair(text: str) -> tuple[int | None, int | None]:
    if text == "auto":  # smof's default schedule
        return None, None
    a, b = (int(v) for v in text.split(","))
    return a, b


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 128 lines, 32 pages of 128x128, 2+2 epochs")
    ap.add_argument("--cls-targets", default="0.5,0.3")
    ap.add_argument("--rec-targets", default="0.7")
    ap.add_argument("--det-targets", default="0.5")
    ap.add_argument("--cls-lines", type=int, default=512)
    ap.add_argument("--rec-lines", type=int, default=256)
    ap.add_argument("--det-pages", type=int, default=128)
    ap.add_argument("--det-size", default="256x256")
    ap.add_argument("--cls-epochs", type=_pair, default=(2, 2), help="search,fine-tune epochs")
    ap.add_argument("--rec-epochs", type=_pair, default=(1, 1), help="search,fine-tune epochs, or auto")
    ap.add_argument("--det-epochs", type=_pair, default=(1, 1), help="search,fine-tune epochs, or auto")
    ap.add_argument("--cls-batch", type=int, default=32)
    ap.add_argument("--rec-batch", type=int, default=16)
    ap.add_argument("--det-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--method", default="smof", choices=("smof", "qr"))
    ap.add_argument("--fresh", type=int, default=500, help="fresh cls lines (det: a quarter as many pages)")
    ap.add_argument("--latency-s", type=float, default=5.0)
    args = ap.parse_args(argv)
    if args.quick:
        args.cls_lines, args.rec_lines, args.det_pages, args.det_size = 128, 64, 32, "128x128"
        args.cls_epochs = args.rec_epochs = args.det_epochs = (2, 2)
        args.fresh, args.latency_s = 200, 2.0
    det_hw = tuple(int(v) for v in args.det_size.split("x"))
    commit = git_commit()  # at the start: the code this run imports

    rows = []
    cls_data = ppocr_calib.calibration("cls", args.cls_lines, seed=0)
    for t in (float(v) for v in args.cls_targets.split(",") if v):
        rows.append(run_one("cls", t, cls_data, [1, *ppocr_calib.CLS_SHAPE], args.cls_epochs, args.cls_batch,
                            args.threads, args.fresh, args.latency_s, args.method))
    rec_targets = [float(v) for v in args.rec_targets.split(",") if v]
    rec_data = ppocr_calib.calibration("rec", args.rec_lines, seed=0) if rec_targets else None
    for t in rec_targets:
        rows.append(run_one("rec", t, rec_data, [1, *ppocr_calib.REC_SHAPE], args.rec_epochs, args.rec_batch,
                            args.threads, args.fresh, args.latency_s, args.method))
    det_data = ppocr_calib.calibration("det", args.det_pages, seed=0, size=det_hw)
    for t in (float(v) for v in args.det_targets.split(",") if v):
        rows.append(run_one("det", t, det_data, [1, 3, *det_hw], args.det_epochs, args.det_batch,
                            args.threads, max(8, args.fresh // 4), args.latency_s, args.method))

    print(_table(rows))
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ppocr-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"command": sys.argv, "git_commit": commit, "args": vars(args), "rows": rows}, indent=1, default=str))
    print(f"\n(rows in {path.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The long fuzz profile of the cut: random CNN-like graphs, checked exactly and against the oracle.

    OMP_NUM_THREADS=1 python bench/fuzz.py --cases 20000 [--start 0] [--out bench/out/fuzz]

Case ``i`` is ``tests.graphgen.from_seed(start + i)``; each is cut by
``smof_onnx.passes.pipeline.cut`` and checked by ``tests.test_fuzz_cut.check_case``: exact
(ONNX Runtime, rel err <= 1e-5), onnx.checker, interface kept, and the oracle's best cut.
Prints a progress line every ``--every`` cases and a summary at the end: how many cases ran,
how many failed (wrong or invalid cut, crash) and how many fell short of the oracle. Each
failing case is saved as ``<out>/<kind>-<seed>.onnx`` with ``<kind>-<seed>.txt`` (seed, the
message, the generator's description); replay one with ``--start SEED --cases 1`` (same generator) or re-check the saved
files with ``--replay bench/out/fuzz/*.onnx`` (after the generator changed).
``--oracle-every N`` runs the oracle (about 2/3 of a case's time) on every Nth case only.
Exit status: 0 when every case passed, 1 otherwise. Run from the repository root.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx  # noqa: E402

from tests import graphgen  # noqa: E402
from tests.test_fuzz_cut import check_case  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--start", type=int, default=0, help="seed of the first case")
    ap.add_argument("--out", default="bench/out/fuzz", help="where failing cases are saved")
    ap.add_argument("--every", type=int, default=500, help="progress line every N cases")
    ap.add_argument("--oracle-every", type=int, default=1,
                    help="run the oracle's best-cut check on every Nth case (0: never); exactness runs on all")
    ap.add_argument("--replay", nargs="+", metavar="ONNX",
                    help="re-check saved failing cases (their .onnx files) with the current code instead")
    args = ap.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"ok": 0, "wrong": 0, "not_best": 0, "generator": 0}
    oracle_checked = 0
    t0 = time.time()
    for i in range(args.cases):
        seed = args.start + i
        try:
            case = graphgen.from_seed(seed)
        except Exception:  # noqa: BLE001 -- a generator bug is reported, not fatal
            counts["generator"] += 1
            print(f"GENERATOR seed={seed}\n{traceback.format_exc()}", flush=True)
            continue
        kind, msg = "ok", ""
        oracle_checked += args.oracle_every > 0 and i % args.oracle_every == 0
        try:
            _, bad = check_case(case, optimal=args.oracle_every > 0 and i % args.oracle_every == 0)
            if bad:
                kind, msg = "not_best", "\n".join(bad)
        except Exception as exc:  # noqa: BLE001 -- every failure is recorded and the run goes on
            kind, msg = "wrong", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
        counts[kind] += 1
        if kind != "ok":
            onnx.save(case.model, str(out / f"{kind}-{seed}.onnx"))
            (out / f"{kind}-{seed}.txt").write_text(f"seed {seed}\n{graphgen.describe(case)}\n{msg}\n")
            print(f"{kind.upper()} seed={seed} {graphgen.describe(case)}\n  {msg.splitlines()[0][:400]}", flush=True)
        if (i + 1) % args.every == 0:
            dt = time.time() - t0
            print(f"progress {i + 1}/{args.cases} cases in {dt:.0f}s ({dt / (i + 1):.3f}s/case) {counts}", flush=True)
    dt = time.time() - t0
    ran = sum(counts.values())
    print(f"done: {ran} cases (seeds {args.start}..{args.start + args.cases - 1}) in {dt:.0f}s "
          f"({dt / max(ran, 1):.3f}s/case): {counts['ok']} passed, {counts['wrong']} wrong/crashed, "
          f"{counts['not_best']} not the best cut (oracle ran on {oracle_checked}), "
          f"{counts['generator']} generator errors", flush=True)
    return 0 if ran == counts["ok"] else 1


def replay(paths) -> int:
    """Re-check saved cases (the generator may have changed since their seeds were drawn)."""
    failed = 0
    for p in paths:
        model = onnx.load(p)
        dims = model.graph.input[0].type.tensor_type.shape.dim
        free = not dims[0].HasField("dim_value")
        shape = [2 if free else dims[0].dim_value] + [d.dim_value for d in dims[1:]]
        named = any(n.name for n in model.graph.node)
        case = graphgen.Case(model, {model.graph.input[0].name: shape}, free, named, ["replay"])
        try:
            _, bad = check_case(case)
            verdict = "not_best: " + bad[0] if bad else "ok"
        except Exception as exc:  # noqa: BLE001
            verdict = f"wrong: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        failed += verdict != "ok"
        print(f"{p}: {verdict}", flush=True)
    print(f"replayed {len(paths)} cases: {len(paths) - failed} pass now, {failed} still fail")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

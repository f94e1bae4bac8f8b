"""Time and peak memory of the cut on a ResNet-50-size model (issue 2, benchmark a).

The model (``models.zoo.resnet50_size``, ~25.6M params, 224x224) is exported once,
canonicalized and given structured zero masks (``bench/cut_latency.structured_masks``), and
saved. Each repetition then runs in a fresh subprocess: load the file, ``pipeline.cut``
(canonical passes + cut rounds), ``to_model``, save -- verification excluded -- and reports
the wall time of each stage and the process's peak RSS (``ru_maxrss``) next to its RSS after
the imports, so the figure is the cut's own memory, not the interpreter's.

    python bench/cut_speed.py [--repeat 3] [--workdir /tmp/smof-bench]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
import onnx
from smof_onnx.passes import pipeline
from smof_onnx.passes.graph import load_model, save_model, to_graph, to_model
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
model = load_model(sys.argv[1])
t1 = time.perf_counter()
res = pipeline.cut(to_graph(model), {model.graph.input[0].name: [1, 3, 224, 224]})
t2 = time.perf_counter()
out = to_model(res.graph)
t3 = time.perf_counter()
save_model(out, sys.argv[2])
t4 = time.perf_counter()
print(json.dumps({"load": t1 - t0, "cut": t2 - t1, "to_model": t3 - t2, "save": t4 - t3,
                  "rounds": res.rounds, "rss_start_mb": rss0 / 1024,
                  "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def prepare(workdir: Path) -> tuple[Path, dict]:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from cut_latency import canonical, structured_masks

    from models import zoo
    from smof_onnx.passes.analysis.flops import count_cost
    from smof_onnx.passes.graph import load_model, save_model

    raw = workdir / "resnet50.onnx"
    if not raw.exists():
        zoo.export_resnet50(raw)
    model = load_model(raw)
    shapes = {model.graph.input[0].name: [1, 3, 224, 224]}
    zeroed, info = structured_masks(canonical(model, shapes))
    path = save_model(zeroed, workdir / "resnet50_zeroed.onnx")
    cost = count_cost(zeroed, shapes)
    return path, {**info, "params": cost.params, "flops": cost.flops, "nodes": len(zeroed.graph.node)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "smof-bench"))
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path, info = prepare(workdir)
    print(f"model: {info['params'] / 1e6:.1f}M params, {info['flops'] / 1e9:.2f} GFLOPs, {info['nodes']} nodes; "
          f"{info['kernels_cut']} of {info['convs_3x3']} 3x3 convs masked, "
          f"{info['convs_channels_zeroed']} convs with a third of their channels zeroed", file=sys.stderr)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for i in range(args.repeat):
        out = workdir / f"cut_{i}.onnx"
        res = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(out), str(ROOT)], capture_output=True,
                             text=True, env=env, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print("| run | load s | cut s | to_model s | save s | total s | rounds | RSS after imports MB | peak RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(rows):
        print(f"| {i + 1} | {r['load']:.2f} | {r['cut']:.2f} | {r['to_model']:.2f} | {r['save']:.2f} "
              f"| {r['load'] + r['cut'] + r['to_model'] + r['save']:.2f} | {r['rounds']} "
              f"| {r['rss_start_mb']:.0f} | {r['rss_peak_mb']:.0f} |")
    cut_times = sorted(r["cut"] for r in rows)
    print(f"\nmedian cut time {cut_times[len(cut_times) // 2]:.2f} s (goal < 2 s, verification excluded)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

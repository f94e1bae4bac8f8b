"""ONNX Runtime latency before / after the cut, next to the FLOPs ratio (issue 2, benchmark b).

For each zoo model: canonicalize (BN folded, as any runtime would), zero *structured*
masks -- every second 3x3 conv cut to 1x1 or 3x1 (alternating), and the last third of the
output channels of every conv (rounded to a multiple of 4; same slots in every conv so
residual groups are removable as a whole; convs that write graph outputs keep theirs) --
then ``smof_onnx.api.cut`` (verified), and time both with
:func:`smof_onnx.verify.compare_latency` (design 8: no spinning, pinned threads,
alternating order, medians, self-vs-self ratio).

    python bench/cut_latency.py [--models resnet_basic,vgg] [--batches 1,32] [--threads 1,2] [--seconds 3]
                                [--channel-fraction 0.333] [--channel-multiple 4] [--kernel-every 2]

Prints a markdown table. ``realized`` = speedup / (FLOPs before / FLOPs after): 1.0 means
the runtime turned the whole FLOPs reduction into speed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import onnx
from onnx import numpy_helper as onh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smof_onnx.passes import pipeline  # noqa: E402
from smof_onnx.passes.graph import to_graph, to_model  # noqa: E402

DEFAULT_MODELS = ("resnet_basic", "resnet_bottleneck", "vgg", "mobilenet_v2")


def canonical(model: onnx.ModelProto, shapes: dict) -> onnx.ModelProto:
    return to_model(pipeline.canonicalize(to_graph(model), shapes).graph)


def structured_masks(model: onnx.ModelProto, kernel_every: int = 2, channel_fraction: float = 1 / 3,
                     multiple: int = 4) -> tuple[onnx.ModelProto, dict]:
    """Zero kernel borders and output channels in a copy of ``model`` (see the module docstring)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    outputs = {o.name for o in m.graph.output}
    n3x3 = cut_kernels = cut_channels = 0
    for node in m.graph.node:
        if node.op_type != "Conv" or node.input[1] not in inits:
            continue
        w = onh.to_array(inits[node.input[1]]).copy()
        b = onh.to_array(inits[node.input[2]]).copy() if len(node.input) > 2 and node.input[2] in inits else None
        if w.ndim == 4 and w.shape[2:] == (3, 3):
            if kernel_every < 10**9 and n3x3 % kernel_every == 0:
                w[:, :, :, [0, 2]] = 0          # 3x1
                if (n3x3 // kernel_every) % 2 == 0:
                    w[:, :, [0, 2], :] = 0      # 1x1
                cut_kernels += 1
            n3x3 += 1
        cout = w.shape[0]
        k = int(round(cout * channel_fraction / multiple)) * multiple
        if node.output[0] not in outputs and 0 < k < cout:
            w[cout - k:] = 0
            if b is not None:
                b[cout - k:] = 0
            cut_channels += 1
        inits[node.input[1]].CopyFrom(onh.from_array(w, node.input[1]))
        if b is not None:
            inits[node.input[2]].CopyFrom(onh.from_array(b, node.input[2]))
    return m, {"convs_3x3": n3x3, "kernels_cut": cut_kernels, "convs_channels_zeroed": cut_channels}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--exporter", default="torchscript")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seconds", type=float, default=3.0, help="time budget per (model, batch, threads)")
    ap.add_argument("--channel-fraction", type=float, default=1 / 3, help="0 for kernel cuts only")
    ap.add_argument("--channel-multiple", type=int, default=4)
    ap.add_argument("--kernel-every", type=int, default=2, help="cut every k-th 3x3 conv; 0 for none")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from models import zoo
    from smof_onnx import api
    from smof_onnx.verify import compare_latency

    print("| model | batch | threads | FLOPs ratio | before ms | after ms | speedup | realized | self-vs-self |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        original = zoo.export(name, args.exporter)
        inp = next(i.name for i in original.graph.input)
        shape = list(zoo.input_shape(name))
        canon = canonical(original, {inp: shape})
        zeroed, info = structured_masks(canon, args.kernel_every or 10**9, args.channel_fraction,
                                        args.channel_multiple)
        cut_model, rep = api.cut(zeroed, input_shapes={inp: shape})
        ratio = rep["flops"]["ratio"]
        print(f"<!-- {name}: {info}, flops {rep['flops']['before']} -> {rep['flops']['after']} -->", file=sys.stderr)
        for batch in [int(b) for b in args.batches.split(",")]:
            for threads in [int(t) for t in args.threads.split(",")]:
                shapes = {inp: [batch] + shape[1:]}
                cmp = compare_latency(zeroed, cut_model, shapes, threads=threads, batch=batch, budget_s=args.seconds)
                realized = cmp.speedup * ratio
                print(f"| {name} | {batch} | {threads} | {ratio:.3f} | {cmp.a.median_ms:.3f} | {cmp.b.median_ms:.3f} "
                      f"| {cmp.speedup:.2f} | {realized:.2f} | {cmp.self_ratio:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

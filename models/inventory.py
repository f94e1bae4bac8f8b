"""Print the op inventory of every zoo export and the PP-OCR models as Markdown tables.

    python -m models.inventory           # uses the caches
    python -m models.inventory --time    # also times cold exports (into a temporary cache)

models/README.md pastes this output; rerun it after changing a builder.
"""
from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time

import onnx


def _ops(model: onnx.ModelProto) -> str:
    counts = collections.Counter(n.op_type for n in model.graph.node)
    return ", ".join(f"{op} {n}" for op, n in sorted(counts.items()))


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def zoo_table(timed: bool) -> str:
    import torch

    from . import zoo
    torch.set_num_threads(1)
    rows = ["| model | input | params | exporter | opset | export s | ops |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        if timed:
            os.environ["SMOF_CACHE"] = tmp
        for name in zoo.NAMES:
            params = zoo.param_count(zoo.build(name))
            shape = "x".join(map(str, zoo.input_shape(name)))
            for exporter in zoo.EXPORTERS:
                t = time.perf_counter()
                model = zoo.export(name, exporter)
                secs = f"{time.perf_counter() - t:.2f}" if timed else "-"
                rows.append(f"| {name} | {shape} | {params:,} | {exporter} | {_opset(model)} | {secs} | {_ops(model)} |")
        if timed:
            del os.environ["SMOF_CACHE"]
    return "\n".join(rows)


def ppocr_table() -> str:
    from . import ppocr
    rows = ["| kind | file | opset | ops |", "|---|---|---|---|"]
    for kind in ppocr.KINDS:
        model = onnx.load(str(ppocr.ppocr_path(kind)))
        rows.append(f"| {kind} | {ppocr.PPOCR_FILES[kind]} | {_opset(model)} | {_ops(model)} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", action="store_true", help="time cold exports in a temporary cache")
    args = parser.parse_args(argv)
    print(zoo_table(args.time))
    print()
    print(ppocr_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure the learning stage's peak memory per sample, for :data:`smof_onnx.learn.memory.ACTIVATION_FACTOR`.

For each model, ``smof`` runs (1 search + 1 fine-tune epoch, mixing on, unbounded budget) in a
fresh process at two batch sizes on ``2 x batch`` samples; the growth of the peak RSS
(``ru_maxrss``) per sample of a step (2 per batch entry with mixing), over the bytes of one
sample's forward activations (:func:`smof_onnx.learn.memory.activation_bytes`), is the factor.

    OMP_NUM_THREADS=1 python bench/memory_factor.py
"""
from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys
import numpy as np, onnx
sys.path.insert(0, '.')
from smof_onnx.methods import METHODS
from smof_onnx.learn.memory import activation_bytes
name, batch = sys.argv[1], int(sys.argv[2])
if name == 'resnet20_fmnist':
    model = onnx.load('models/default/resnet20_fmnist.onnx'); shape = (1, 28, 28)
elif name.startswith('dense'):
    from bench.memory_factor import dense_net
    side = int(name[5:]); model = dense_net(side); shape = (3, side, side)
else:
    from models import zoo
    model = onnx.load(str(zoo.export(name))); shape = zoo.input_shape(name)[1:]
x = np.random.default_rng(0).standard_normal((2 * batch, *shape)).astype(np.float32)
inp = model.graph.input[0].name
A = activation_bytes(model, {inp: shape})
METHODS['smof'](model, {inp: x}, epochs=1, finetune_epochs=1, batch_size=batch, val_split=0.0,
                progress_bars=False, max_memory='1T', threads=1)
print(json.dumps({'peak': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'A': A}))
"""


def dense_net(side: int):
    """x[N,3,side,side] -> conv 3x3 s2 (16) -> relu -> conv 3x3 (16) -> relu -> conv 3x3 s2 (32)
    -> relu -> conv 1x1 (1) -> sigmoid: a dense, detector-like map."""
    import numpy as np
    import onnx
    from onnx import helper as oh
    from onnx import numpy_helper as onh

    rng = np.random.default_rng(0)

    def w(name, *shape):
        return onh.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name)

    inits = [w("w1", 16, 3, 3, 3), w("b1", 16), w("w2", 16, 16, 3, 3), w("b2", 16), w("w3", 32, 16, 3, 3),
             w("b3", 32), w("w4", 1, 32, 1, 1), w("b4", 1)]
    nodes = [oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4, strides=[2, 2]),
             oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             oh.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1] * 4),
             oh.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             oh.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", pads=[1] * 4, strides=[2, 2]),
             oh.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             oh.make_node("Conv", ["r3", "w4", "b4"], ["c4"], name="conv4"),
             oh.make_node("Sigmoid", ["c4"], ["y"], name="sigmoid")]
    graph = oh.make_graph(nodes, "dense", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, side, side])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def measure(name: str, batch: int) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, name, str(batch)], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    names = (argv or sys.argv[1:]) or ["dense256", "resnet20_fmnist", "mobilenet_v2"]
    lo, hi = 8, 32
    for name in names:
        a, b = measure(name, lo), measure(name, hi)
        per_sample = (b["peak"] - a["peak"]) / (2 * (hi - lo))  # mixing: 2 samples per batch entry
        print(f"{name}: A = {a['A'] / 2**20:.2f} MiB/sample, peak {a['peak'] / 2**20:.0f} MiB at batch {lo}, "
              f"{b['peak'] / 2**20:.0f} MiB at batch {hi}: {per_sample / 2**20:.2f} MiB per sample, "
              f"factor {per_sample / a['A']:.2f}", flush=True)


if __name__ == "__main__":
    main()

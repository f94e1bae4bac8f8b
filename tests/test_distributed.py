"""torchrun: a 2-process (gloo) compress selects what one process selects, and only rank 0 writes.

The two runs read the same Fashion-MNIST subset with the same global batch and seed; the search
is data-parallel (DistributedSampler shards, DDP gradients, all-reduced gate gradients and BN
statistics: :mod:`smof_onnx.learn.distributed`), so every rank scores the gates as the plain run
does. ``--no-latency``: the gate costs are FLOPs, not timings (two runs time differently).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

pytest.importorskip("torch")
from models import fashion_mnist  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def small_cnn() -> onnx.ModelProto:
    """1x28x28 -> conv 8 -> relu -> conv 16 stride 2 -> relu -> GAP -> gemm 10 (seeded weights)."""
    rng = np.random.default_rng(0)

    def init(name, *shape, scale=0.3):
        return onnx.numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c1"], ["r1"]),
             oh.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
             oh.make_node("Relu", ["c2"], ["r2"]),
             oh.make_node("GlobalAveragePool", ["r2"], ["g"]),
             oh.make_node("Flatten", ["g"], ["f"]),
             oh.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    inits = [init("w1", 8, 1, 3, 3), init("b1", 8, scale=0.1), init("w2", 16, 8, 3, 3, scale=0.2),
             init("b2", 16, scale=0.1), init("w3", 10, 16), init("b3", 10, scale=0.1)]
    g = oh.make_graph(nodes, "small", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 28, 28])],
                      [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])], inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compress(args: list[str], cwd: Path, launcher: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(launcher + ["-m", "smof_onnx", "compress", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240)


@pytest.mark.skipif(not fashion_mnist.available(), reason="Fashion-MNIST is not in the cache (models/cache.py)")
@pytest.mark.slow  # trains or runs end to end
def test_two_processes_select_the_gates_of_one_and_only_rank_0_writes(tmp_path):
    x, y = fashion_mnist.load("train")
    onnx.save(small_cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x[:256].astype(np.float32), labels=y[:256])
    # 0.3: beyond what the kernel rings alone reach, so channels go too and the same-function
    # check below compares channel choices
    common = ["m.onnx", "--data", "d.npz", "--target-flops", "0.3", "--epochs", "1", "--finetune-epochs", "1",
              "--batch-size", "32", "--val-split", "0", "--threads", "1", "--device", "cpu", "--no-latency",
              "--seed", "3", "--channel-multiple", "1"]
    one = _compress(common + ["-o", "one.onnx", "--report", "one.json"], tmp_path, [sys.executable])
    assert one.returncode == 0, one.stderr[-3000:]
    (tmp_path / "two").mkdir()
    for f in ("m.onnx", "d.npz"):
        os.link(tmp_path / f, tmp_path / "two" / f)
    two = _compress(common + ["-o", "two.onnx", "--report", "two.json"], tmp_path / "two",
                    [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                     "--master-addr", "127.0.0.1", "--master-port", str(_free_port())])
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two" / "two.json").read_text())
    assert a["method"]["distributed"] == {"world_size": 1, "backend": "none"}
    assert b["method"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert b["method"]["choices"] == a["method"]["choices"]  # the same gates, layer by layer
    assert a["flops"]["ratio"] <= 0.31 and any(c.get("dropped_out") for c in a["method"]["choices"])  # a cut
    # rank 0 wrote the model and the report once; rank 1 wrote nothing and printed no table
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["d.npz", "m.onnx", "two.json", "two.onnx"]
    assert two.stdout.count("FLOPs") == one.stdout.count("FLOPs")
    # the same channels, not only as many: the two compressed models compute the same function
    # (trained alike up to the float rounding of the all-reduce), a different channel would not
    import onnxruntime as ort

    feed = {"x": x[256:320].astype(np.float32)}
    out_a = ort.InferenceSession(str(tmp_path / "one.onnx")).run(None, feed)[0]
    out_b = ort.InferenceSession(str(tmp_path / "two" / "two.onnx")).run(None, feed)[0]
    assert np.abs(out_a - out_b).max() <= 1e-3 * np.abs(out_a).max()

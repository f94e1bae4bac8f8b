"""The pipeline owns the order of the cut: canonical passes once, then cut rounds to a fixed point.

The order, the fixed-point loop, the configuration switches and the stats merging are tested with
stand-in passes (recording what ran, removing one node per call), so these tests say what the
pipeline does independently of what each real pass does; the last tests run the real passes."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_graphsurgeon as gs
import pytest

from smof_onnx.passes import pipeline
from smof_onnx.passes.base import PassError, PassResult
from smof_onnx.passes.graph import to_graph, to_model
from tests.helpers import assert_equivalent

F = onnx.TensorProto.FLOAT


def _identity_chain(n: int) -> gs.Graph:
    nodes = [oh.make_node("Identity", [f"t{i}"], [f"t{i + 1}"], name=f"id{i}") for i in range(n)]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("t0", F, [1, 2])],
                      [oh.make_tensor_value_info(f"t{n}", F, [1, 2])])
    return to_graph(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]))


class Recorder:
    """Stand-in passes: each records its call; ``remover`` names the pass that removes one Identity
    per call (bypassing it), so the cut takes as many changing rounds as there are Identity nodes."""

    def __init__(self, remover: str | None = None, stats=None):
        self.calls: list[tuple[str, bool]] = []
        self.remover = remover
        self.stats = stats or {}

    def resolve(self, name):
        def fake(graph, *args):
            self.calls.append((name, bool(args)))
            changed = False
            if name == self.remover:
                ids = [n for n in graph.nodes if n.op == "Identity"]
                if ids:
                    node = ids[0]
                    src, dst = node.inputs[0], node.outputs[0]
                    for consumer in list(dst.outputs):
                        consumer.inputs[consumer.inputs.index(dst)] = src
                    if dst in graph.outputs:
                        graph.outputs[graph.outputs.index(dst)] = src
                    node.outputs.clear()
                    graph.cleanup()
                    changed = True
            return PassResult(graph, changed, dict(self.stats.get(name, {})) if changed or name != self.remover
                              else {})
        return fake


def test_canonicalize_runs_the_canonical_passes_once_in_order_and_shapes_go_to_explicit_pads(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(pipeline, "_resolve", rec.resolve)
    out = pipeline.canonicalize(_identity_chain(1), {"t0": [1, 2]})
    assert [name for name, _ in rec.calls] == [
        "constants_to_initializers", "fold_constants", "clone_shared_weights", "fuse_batchnorm",
        "fold_channel_affine", "explicit_pads", "eliminate_dead_nodes"]
    assert [name for name, with_shapes in rec.calls if with_shapes] == ["explicit_pads"]
    assert [name for name, _ in out.results] == [name for name, _ in rec.calls]


def test_cut_repeats_rounds_until_a_round_changes_nothing(monkeypatch):
    rec = Recorder(remover="cut_dead_channels")
    monkeypatch.setattr(pipeline, "_resolve", rec.resolve)
    out = pipeline.cut(_identity_chain(3))
    # Three rounds each remove one Identity, the fourth finds nothing to do.
    assert out.rounds == 4
    assert [n.op for n in out.graph.nodes] == []
    names = [name for name, _ in rec.calls]
    assert names[:7] == list(pipeline.CANONICAL_ORDER)
    assert names[7:] == list(pipeline.CUT_ROUND) * 4
    assert [name for name, with_shapes in rec.calls[7:11] if with_shapes] == [
        "drop_zero_branches", "cut_dead_channels", "cut_kernel_borders"]


@pytest.mark.parametrize("config,absent", [
    (pipeline.CutConfig(kernel=False), {"cut_kernel_borders"}),
    (pipeline.CutConfig(channels=False), {"cut_dead_channels"}),
    (pipeline.CutConfig(channels=False, branches=False), {"cut_dead_channels", "drop_zero_branches"}),
])
def test_config_switches_leave_out_their_passes(monkeypatch, config, absent):
    rec = Recorder(remover="eliminate_dead_nodes")
    monkeypatch.setattr(pipeline, "_resolve", rec.resolve)
    pipeline.cut(_identity_chain(1), config=config)
    ran = {name for name, _ in rec.calls}
    assert not (ran & absent)
    assert set(pipeline.CUT_ROUND) - absent <= ran


def test_config_is_frozen():
    with pytest.raises(Exception):
        pipeline.CutConfig().kernel = False  # type: ignore[misc]


def test_a_cut_that_keeps_changing_is_an_error_naming_the_pass(monkeypatch):
    rec = Recorder(remover="cut_kernel_borders")
    monkeypatch.setattr(pipeline, "_resolve", rec.resolve)
    with pytest.raises(PassError, match="did not converge after 2 rounds.*cut_kernel_borders"):
        pipeline.cut(_identity_chain(5), config=pipeline.CutConfig(max_rounds=2))


def test_a_pass_that_returns_no_pass_result_is_a_contract_error(monkeypatch):
    monkeypatch.setattr(pipeline, "_resolve", lambda name: (lambda graph, *a: graph))
    with pytest.raises(PassError, match="constants_to_initializers.*not a PassResult"):
        pipeline.canonicalize(_identity_chain(1))


def test_stats_merge_across_rounds_and_refusals_are_listed_once(monkeypatch):
    stats = {
        "cut_dead_channels": {"removed": 2, "nodes": ["a"], "by_group": {"g0": 2},
                              "frozen": [{"where": "Add_3", "reason": "graph output"}]},
        "cut_kernel_borders": {"refused": {"ConvT_1": "ConvTranspose with output_padding"}},
        "explicit_pads": {"skipped": [("conv_9", "stride 2 with dynamic spatial size")]},
    }
    rec = Recorder(remover="cut_dead_channels", stats=stats)
    monkeypatch.setattr(pipeline, "_resolve", rec.resolve)
    out = pipeline.cut(_identity_chain(2))
    assert out.removed_channels() == {"removed": 4, "nodes": ["a", "a"], "by_group": {"g0": 4},
                                      "frozen": [{"where": "Add_3", "reason": "graph output"}] * 2}
    frozen = out.frozen()
    assert {"where": "Add_3", "reason": "graph output", "pass": "cut_dead_channels"} in frozen
    assert {"where": "ConvT_1", "reason": "ConvTranspose with output_padding",
            "pass": "cut_kernel_borders"} in frozen
    assert {"where": "conv_9", "reason": "stride 2 with dynamic spatial size", "pass": "explicit_pads"} in frozen
    assert len(frozen) == 3
    summary = {row["pass"]: row for row in out.summary()}
    assert summary["cut_dead_channels"]["changed"] and summary["cut_dead_channels"]["stats"]["removed"] == 4
    assert not summary["fuse_batchnorm"]["changed"]


# --- the real passes ---------------------------------------------------------------------------

def test_every_step_resolves_to_its_pass_module_entry():
    for name in pipeline.CANONICAL_ORDER + pipeline.CUT_ROUND:
        assert callable(pipeline._resolve(name)), name


def _zeroed_net() -> onnx.ModelProto:
    """Conv(3->8, 3x3) -> BN -> Relu -> Conv(8->4, 3x3), with the first conv's kernel ring zero
    (a 1x1 kernel remains) and its filters 5..7 zero (their BN shift zero too)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal([8, 3, 3, 3]).astype(np.float32)
    w1[:, :, [0, 2], :] = 0
    w1[:, :, :, [0, 2]] = 0
    w1[5:] = 0
    scale = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    bias[5:] = 0
    mean = np.zeros(8, np.float32)
    var = np.ones(8, np.float32)
    w2 = rng.standard_normal([4, 8, 3, 3]).astype(np.float32)
    inits = [onh.from_array(a, n) for a, n in [(w1, "w1"), (scale, "s"), (bias, "b"), (mean, "m"), (var, "v"),
                                                 (w2, "w2")]]
    nodes = [oh.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             oh.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["bn"], name="bn1"),
             oh.make_node("Relu", ["bn"], ["r"], name="relu1"),
             oh.make_node("Conv", ["r", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    g = oh.make_graph(nodes, "net", [oh.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
                      [oh.make_tensor_value_info("y", F, ["N", 4, 8, 8])], inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


def test_real_cut_removes_the_zero_ring_and_the_zero_channels_exactly():
    model = _zeroed_net()
    out = pipeline.cut(to_graph(model))
    cut_model = to_model(out.graph)
    assert_equivalent(model, cut_model)
    convs = {n.name: n for n in out.graph.nodes if n.op == "Conv"}
    assert [n.op for n in out.graph.nodes].count("BatchNormalization") == 0
    assert tuple(convs["conv1"].inputs[1].shape) == (5, 3, 1, 1)
    assert tuple(convs["conv2"].inputs[1].shape) == (4, 5, 3, 3)
    assert out.changed and out.rounds >= 2

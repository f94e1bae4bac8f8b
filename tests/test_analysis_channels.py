"""Specification of passes.analysis.channels: slots, groups, facts, frozen reasons, the public API.

Also home of :class:`Net`, the small inline model builder the channel tests share.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from smof_onnx.passes.analysis.channels import Frozen, analyze_channels
from smof_onnx.passes.graph import to_graph


class Net:
    """Build small ONNX models node by node; weights random unless zeroed on purpose."""

    def __init__(self, opset: int = 13, seed: int = 0):
        self.opset, self.rng = opset, np.random.default_rng(seed)
        self.nodes, self.inits, self.inputs = [], [], []
        self._n = itertools.count()

    def name(self, base: str) -> str:
        return f"{base}{next(self._n)}"

    def input(self, shape, name: str = "x") -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name

    def const(self, value, base: str = "k") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, shape, zero_rows=(), zero_cols=(), scale: float = 1.0):
        w = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        w[list(zero_rows)] = 0
        if len(shape) > 1:
            w[:, list(zero_cols)] = 0
        return w

    def op(self, op: str, inputs, n_out: int = 1, name: str | None = None, domain: str | None = None, **attrs):
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name or self.name(op + "_"),
                                           domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x, cin, cout, k=3, group=1, bias=True, zero_out=(), zero_in=(), name=None, **attrs):
        w = self.weight((cout, cin // group, *([k] * 2)), zero_out, zero_in)
        ins = [x, self.const(w, "W")]
        if bias:
            bv = self.rng.standard_normal(cout).astype(np.float32)
            bv[list(zero_out)] = 0
            ins.append(self.const(bv, "B"))
        attrs.setdefault("pads", [k // 2] * 4)
        return self.op("Conv", ins, name=name, group=group, **attrs)

    def bn(self, x, c, zero=(), name=None):
        g, beta = self.rng.uniform(0.5, 1.5, c).astype(np.float32), self.rng.standard_normal(c).astype(np.float32)
        mean, var = self.rng.standard_normal(c).astype(np.float32), self.rng.uniform(0.5, 2, c).astype(np.float32)
        g[list(zero)], beta[list(zero)] = 0, 0
        return self.op("BatchNormalization", [x] + [self.const(v, "bn") for v in (g, beta, mean, var)], name=name)

    def gemm(self, x, k, n, zero_out=(), zero_in=(), name=None):
        w = self.weight((n, k), zero_out, zero_in)
        bv = self.rng.standard_normal(n).astype(np.float32)
        bv[list(zero_out)] = 0
        return self.op("Gemm", [x, self.const(w, "G"), self.const(bv, "Gb")], name=name, transB=1)

    def model(self, *outputs: str, shapes: dict | None = None) -> onnx.ModelProto:
        """The model; ``shapes`` declares output shapes that inference cannot tell (runtime reshapes)."""
        g = helper.make_graph(self.nodes, "net", self.inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, (shapes or {}).get(o))
                               for o in outputs], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        m = onnx.shape_inference.infer_shapes(m)
        onnx.checker.check_model(m, full_check=True)
        return m


def analyze(model: onnx.ModelProto, shapes=None):
    return analyze_channels(to_graph(model), shapes)


def chain(zero_out=(), zero_in=()):
    n = Net()
    x = n.input(["N", 3, 8, 8])
    c = n.conv(x, 3, 8, zero_out=zero_out, name="c1")
    a = n.op("Relu", [c])
    y = n.conv(a, 8, 4, zero_in=zero_in, name="c2")
    return n.model(y), c, a, y


def test_slots_of_a_plain_chain_pair_each_conv_output_channel_with_its_relu():
    m, conv, relu, _ = chain()
    a = analyze(m)
    for c in range(8):
        (s,) = {int(a.slots_of(conv)[c]), int(a.slots_of(relu)[c])}
        slot = a.slots[s]
        assert sorted(slot.atoms) == sorted([(conv, c), (relu, c)])
        assert slot.producers == [("c1", "Conv", c)]
        assert slot.consumers == [("c2", "Conv", c)]
        assert not slot.removable and not slot.zero and not slot.unused


def test_zero_filter_makes_its_slot_zero_and_removable():
    m, _, relu, _ = chain(zero_out=(2, 5))
    a = analyze(m)
    assert a.tensor_zero(relu).tolist() == [c in (2, 5) for c in range(8)]
    removable = {a.slots[s.id].atoms[0][1] for s in a.removable_slots()}
    assert removable == {2, 5}


def test_zero_input_weights_make_the_channel_unused_not_zero():
    m, conv, relu, _ = chain(zero_in=(1,))
    a = analyze(m)
    assert a.tensor_unused(relu).tolist() == [c == 1 for c in range(8)]
    assert not a.tensor_zero(relu).any()
    assert [s.atoms[0][1] for s in a.removable_slots()] == [1]
    assert a.slots[int(a.slots_of(conv)[1])].unused


def test_graph_inputs_and_outputs_are_frozen_with_reasons():
    m, _, _, y = chain()
    a = analyze(m)
    wheres = {f.where for f in a.frozen}
    assert "graph input 'x'" in wheres
    assert f"graph output '{y}'" in wheres
    out_slot = a.slots[int(a.slots_of(y)[0])]
    assert not out_slot.removable and out_slot.frozen_by and out_slot.frozen_by[0].reason


def test_unsupported_op_freezes_its_spaces_and_names_itself():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.op("Relu", [n.conv(x, 3, 6, zero_out=(0,), name="ca")])
    b = n.op("LRN", [a], name="lrn", size=3)
    c = n.conv(b, 6, 4, name="cb")
    d = n.op("Relu", [n.conv(c, 4, 5, zero_out=(3,), name="cc")])
    y = n.conv(d, 5, 2, name="cd")
    an = analyze(n.model(y))
    frozen_here = [f for f in an.frozen if f.where == "lrn (LRN)"]
    assert frozen_here and "LRN" in frozen_here[0].reason
    assert not an.slots[int(an.slots_of(a)[0])].removable          # zero, but LRN reads it
    assert an.slots[int(an.slots_of(a)[0])].zero
    assert an.slots[int(an.slots_of(d)[3])].removable              # elsewhere the cut goes on


@pytest.mark.parametrize("op,domain,attrs", [("QLinearConv", None, {}), ("MyOp", "com.example", {})])
def test_quantized_and_custom_ops_are_frozen(op, domain, attrs):
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.op("Relu", [n.conv(x, 3, 4, zero_out=(1,), name="c")])
    n.nodes.append(helper.make_node(op, [a], ["q"], name="q", domain=domain))
    g = helper.make_graph(n.nodes, "g", n.inputs, [helper.make_tensor_value_info("q", TensorProto.FLOAT, None)],
                          n.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)] +
                          ([helper.make_opsetid(domain, 1)] if domain else []))
    an = analyze(m)
    assert any(f.where == f"q ({op})" for f in an.frozen)
    assert not an.slots[int(an.slots_of(a)[1])].removable


def test_groups_join_tensors_coupled_by_a_residual_add():
    n = Net()
    x = n.input(["N", 4, 8, 8])
    a = n.conv(x, 4, 6, name="stem")
    b = n.op("Relu", [n.conv(a, 6, 6, name="br")])
    s = n.op("Add", [a, b])
    y = n.conv(s, 6, 2, name="head")
    an = analyze(n.model(y))
    group = next(g for g in an.groups if a in g.tensors)
    assert {a, b, s} <= set(group.tensors)
    assert len(group.slots) == 6 and not group.frozen
    for c in range(6):
        assert len({int(an.slots_of(t)[c]) for t in (a, b, s)}) == 1


def test_zero_if_producers_zeroed_true_for_conv_slots_false_with_sigmoid_consumed():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.conv(x, 3, 4, name="c1")
    s = n.op("Sigmoid", [a])
    y = n.conv(s, 4, 2, name="c2")
    r = n.op("Relu", [n.conv(x, 3, 5, name="c3")])
    y2 = n.conv(r, 5, 2, name="c4")
    an = analyze(n.model(y, y2))
    assert not an.slots[int(an.slots_of(a)[0])].zero_if_producers_zeroed   # sigmoid(0) = 0.5 is read
    assert an.slots[int(an.slots_of(r)[0])].zero_if_producers_zeroed
    assert not an.slots[int(an.slots_of(r)[0])].removable


def test_zero_if_producers_zeroed_for_an_se_block():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    f = n.op("Relu", [n.conv(x, 3, 8, name="feat")])
    p = n.op("GlobalAveragePool", [f])
    h = n.op("Relu", [n.conv(p, 8, 2, k=1, name="se1")])
    g = n.op("Sigmoid", [n.conv(h, 2, 8, k=1, name="se2")])
    m = n.op("Mul", [f, g])
    y = n.conv(m, 8, 3, name="head")
    an = analyze(n.model(y))
    slot = an.slots[int(an.slots_of(f)[3])]
    assert {t for t, _ in slot.atoms} >= {f, p, g, m}
    assert {(p_[0], p_[2]) for p_ in slot.producers} == {("feat", 3), ("se2", 3)}
    assert slot.zero_if_producers_zeroed and not slot.removable


def test_slot_containing_a_graph_input_channel_is_never_gateable():
    n = Net()
    x = n.input(["N", 4, 8, 8])
    a = n.conv(x, 4, 4, name="c")
    s = n.op("Add", [x, a])
    y = n.conv(s, 4, 2, name="h")
    an = analyze(n.model(y))
    assert not any(sl.zero_if_producers_zeroed for sl in an.slots if ("x", 0) in sl.atoms)


def test_unknown_tensor_is_a_key_error():
    an = analyze(chain()[0])
    with pytest.raises(KeyError, match="no tracked channel space"):
        an.tensor_zero("nope")


def test_frozen_is_a_dataclass_with_where_and_reason():
    f = Frozen("n (Op)", "why")
    assert f.to_dict() == {"where": "n (Op)", "reason": "why"}


def zero_producers(graph, slot) -> None:
    """Zero every producer entry of ``slot`` in ``graph`` (what the learning stage's gate does)."""
    import onnx_graphsurgeon as gs
    nodes = {n.name: n for n in graph.nodes}
    for name, op, f in slot.producers:
        n = nodes[name]
        vals = [np.array(t.values) if isinstance(t, gs.Constant) else None for t in n.inputs]
        if op == "Conv":
            vals[1][f] = 0
        elif op == "ConvTranspose":
            g = n.attrs.get("group", 1)
            m, k = vals[1].shape[1], vals[1].shape[0] // g
            vals[1][(f // m) * k:(f // m + 1) * k, f % m] = 0
        elif op == "Gemm":
            if n.attrs.get("transB", 0):
                vals[1][f] = 0
            else:
                vals[1][:, f] = 0
            if len(vals) > 2 and vals[2] is not None and vals[2].ndim and vals[2].shape[-1] > 1:
                vals[2][..., f] = 0
        elif op == "MatMul":
            vals[1][:, f] = 0
        elif op in ("BatchNormalization", "InstanceNormalization"):
            vals[1][f] = vals[2][f] = 0
        if op in ("Conv", "ConvTranspose") and len(vals) > 2 and vals[2] is not None:
            vals[2][f] = 0
        for t, v in zip(n.inputs, vals):
            if v is not None:
                t.values = v


@pytest.mark.parametrize("case", [("mobilenet_v3", "torchscript"), ("yolo", "dynamo"), ("mtcnn", "torchscript"),
                                  ("resnet_bottleneck", "dynamo"), ("unet", "torchscript")])
def test_zeroing_the_producers_of_a_gateable_slot_makes_it_removable(case):
    from tests import cases
    model = cases.load_zoo(*case)
    shapes = {model.graph.input[0].name: list(cases.zoo_input_shape(case[0]))}
    an = analyze(model, shapes)
    gateable = [s for s in an.slots if s.zero_if_producers_zeroed]
    assert gateable
    rng = np.random.default_rng(0)
    for s in rng.choice(gateable, size=min(12, len(gateable)), replace=False):
        g = to_graph(model)
        zero_producers(g, s)
        after = analyze_channels(g, shapes)
        atom = s.atoms[0]
        slot_after = after.slots[int(after.slots_of(atom[0])[atom[1]])]
        assert slot_after.removable, (s.atoms[:4], s.producers[:4])
        assert sorted(slot_after.atoms) == sorted(s.atoms)


def test_tensors_read_inside_a_subgraph_are_frozen_by_the_node_that_owns_it():
    """An If body reading an outer tensor is a consumer its input list does not show."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal([4, 3, 1, 1]).astype(np.float32)
    w1[3] = 0  # filter 3 is zero: removable, were it not read inside the If
    body = helper.make_graph(
        [helper.make_node("Relu", ["c1"], ["b_y"], name="body_relu")], "then", [],
        [helper.make_tensor_value_info("b_y", TensorProto.FLOAT, ["N", 4, 8, 8])])
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
         helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=body, else_branch=body)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
              helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [numpy_helper.from_array(w1, "w1")])
    a = analyze_channels(to_graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])))
    slot = a.slots[a.slots_of("c1")[3]]
    assert slot.zero and not slot.removable
    assert any("branch" in f.where and "subgraph" in f.reason for f in slot.frozen_by)

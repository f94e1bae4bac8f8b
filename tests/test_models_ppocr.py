"""models.ppocr: the real PP-OCR det / rec / cls models are fetched once, run under ONNX Runtime
at PPOCR_SHAPES, and have the op inventory models/README.md promises to other modules."""
from __future__ import annotations

import sys
import zipfile

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from models import ppocr
from tests import cases, helpers

# models/README.md, "PP-OCR models": exact op counts of the pinned files (SHA-256 checked).
OP_COUNTS = {
    "det": {"Add": 89, "BatchNormalization": 3, "Clip": 24, "Concat": 1, "Constant": 342, "Conv": 62,
            "ConvTranspose": 2, "Div": 24, "GlobalAveragePool": 10, "HardSigmoid": 10, "Mul": 86,
            "Relu": 12, "Resize": 6, "Sigmoid": 1},
    "rec": {"Add": 107, "AveragePool": 1, "BatchNormalization": 6, "Cast": 23, "Clip": 28, "Concat": 7,
            "Constant": 420, "Conv": 38, "Div": 33, "GlobalAveragePool": 2, "HardSigmoid": 2, "MatMul": 13,
            "Mul": 107, "Pow": 5, "ReduceMean": 10, "Relu": 2, "Reshape": 6, "Shape": 4, "Sigmoid": 7,
            "Slice": 10, "Softmax": 3, "Sqrt": 5, "Squeeze": 7, "Sub": 5, "Transpose": 9},
    "cls": {"Add": 44, "BatchNormalization": 35, "Cast": 3, "Clip": 18, "Concat": 1, "Constant": 308,
            "Conv": 53, "Div": 18, "GlobalAveragePool": 10, "HardSigmoid": 9, "Identity": 1, "MatMul": 1,
            "MaxPool": 1, "Mul": 27, "Relu": 15, "Reshape": 19, "Shape": 1, "Slice": 1, "Softmax": 1},
}
OPSET = {"det": 12, "rec": 12, "cls": 11}
OUTPUT_SHAPE = {"det": lambda n, h, w: (n, 1, h, w), "rec": lambda n, h, w: (n, w // 8, 6625),
                "cls": lambda n, h, w: (n, 2)}
# (hard-swish x*clip(x+3,0,6)/6, SE blocks, depthwise 5x5 convs, BN after a Conv, BN after another op)
FEATURES = {"det": (24, 10, 8, 2, 1), "rec": (28, 2, 8, 6, 0), "cls": (18, 9, 8, 35, 0)}


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.nodes = list(model.graph.node)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.const = {n.output[0]: numpy_helper.to_array(n.attribute[0].t)
                      for n in self.nodes if n.op_type == "Constant"}

    def op(self, tensor):
        p = self.producer.get(tensor)
        return p.op_type if p is not None else None

    def scalar(self, tensor):
        v = self.const.get(tensor)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    def uses(self, tensor, op_type):
        return [c for c in self.consumers.get(tensor, []) if c.op_type == op_type]


def _hard_swish_count(g: _Graph) -> int:
    """x * clip(x + 3, 0, 6) / 6, as Add -> Clip -> Mul(x, .) -> Div."""
    count = 0
    for add in (n for n in g.nodes if n.op_type == "Add" and g.scalar(n.input[1]) == 3.0):
        x = add.input[0]
        for clip in g.uses(add.output[0], "Clip"):
            if (g.scalar(clip.input[1]), g.scalar(clip.input[2])) != (0.0, 6.0):
                continue
            for mul in g.uses(clip.output[0], "Mul"):
                if x in mul.input and any(g.scalar(d.input[1]) == 6.0 for d in g.uses(mul.output[0], "Div")):
                    count += 1
    return count


def _se_count(g: _Graph) -> int:
    """GlobalAveragePool -> Conv -> Relu -> Conv -> HardSigmoid -> Mul with the pooled tensor.

    A conv bias written as a separate Add of a (reshaped) Constant (cls does this) is stepped over.
    """
    def is_bias(t):
        return g.op(t) == "Constant" or (g.op(t) == "Reshape" and g.op(g.producer[t].input[0]) == "Constant")

    count = 0
    for hs in (n for n in g.nodes if n.op_type == "HardSigmoid"):
        t, chain = hs.input[0], []
        while len(chain) < 4 and t in g.producer:
            node = g.producer[t]
            if node.op_type == "Add" and is_bias(node.input[1]):
                t = node.input[0]
                continue
            chain.append(node.op_type)
            t = node.input[0]
        if chain == ["Conv", "Relu", "Conv", "GlobalAveragePool"] and any(t in m.input for m in g.uses(hs.output[0], "Mul")):
            count += 1
    return count


def _weights(g: _Graph, node) -> np.ndarray:
    return g.const[node.input[1]]


def test_models_load_check_and_run_at_ppocr_shapes(ppocr_model):
    kind, model, shape = ppocr_model
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == [ppocr.INPUT_NAME]
    for batch in (shape[0], 2):
        feed_shape = (batch, *shape[1:])
        outs = list(helpers.run(model, helpers.random_inputs(model, {"x": feed_shape}, seed=batch)).values())
        assert len(outs) == 1
        out = outs[0]
        assert out.shape == OUTPUT_SHAPE[kind](batch, *shape[2:])
        assert np.isfinite(out).all()
        if kind in ("rec", "cls"):  # both end in a softmax over classes
            np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-4)
        else:  # det ends in a sigmoid probability map
            assert ((out >= 0) & (out <= 1)).all()


def test_shapes_are_valid_for_each_model():
    assert ppocr.PPOCR_SHAPES["det"][2] % 32 == 0 and ppocr.PPOCR_SHAPES["det"][3] % 32 == 0
    assert ppocr.PPOCR_SHAPES["rec"][2] == 48
    assert ppocr.PPOCR_SHAPES["cls"] == (1, 3, 48, 192)


def test_op_inventory_is_what_the_readme_says(ppocr_model):
    kind, model, _ = ppocr_model
    assert helpers.op_counts(model) == OP_COUNTS[kind]
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET[kind])]


def test_weights_live_in_constant_nodes_not_initializers(ppocr_model):
    _, model, _ = ppocr_model
    g = _Graph(model)
    assert len(model.graph.initializer) == 0
    weighted = [n for n in g.nodes if n.op_type in ("Conv", "ConvTranspose")]
    assert weighted and all(g.op(n.input[1]) == "Constant" for n in weighted)
    assert all(g.op(i) == "Constant" for n in g.nodes if n.op_type == "BatchNormalization" for i in n.input[1:])


def test_real_model_features_are_present(ppocr_model):
    kind, model, _ = ppocr_model
    g = _Graph(model)
    hswish, se, dw5, bn_after_conv, bn_other = FEATURES[kind]
    assert _hard_swish_count(g) == hswish
    assert _se_count(g) == se
    dw = [n for n in g.nodes if n.op_type == "Conv" and _weights(g, n).shape[1] == 1
          and _weights(g, n).shape[2:] == (5, 5) and _weights(g, n).shape[0] > 1]
    assert len(dw) == dw5
    bns = [n for n in g.nodes if n.op_type == "BatchNormalization"]
    assert sum(g.op(n.input[0]) == "Conv" for n in bns) == bn_after_conv
    assert sum(g.op(n.input[0]) != "Conv" for n in bns) == bn_other


def test_input_dims_are_dynamic(ppocr_model):
    kind, model, _ = ppocr_model
    dims = model.graph.input[0].type.tensor_type.shape.dim
    static = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    assert static == [None, 3, None, None]


def test_det_upsamples_with_conv_transpose_and_nearest_resize():
    g = _Graph(cases.load_ppocr("det"))
    convt = [n for n in g.nodes if n.op_type == "ConvTranspose"]
    assert [tuple(_weights(g, n).shape[2:]) for n in convt] == [(2, 2), (2, 2)]
    # DB head: BN -> Relu -> ConvTranspose (bias as a separate Add of a Constant) -> ... -> Sigmoid;
    # the second BN reads that Add, so it cannot be folded into a Conv without first folding the Add.
    for n in convt:
        assert g.op(n.input[0]) == "Relu" and g.op(g.producer[n.input[0]].input[0]) == "BatchNormalization"
        assert len(n.input) == 2
        adds = g.uses(n.output[0], "Add")
        assert len(adds) == 1 and g.op(adds[0].input[1]) == "Constant"
    assert g.op(g.producer[convt[1].input[0]].input[0]) != "Conv"
    modes = {onnx.helper.get_attribute_value(a) for n in g.nodes if n.op_type == "Resize"
             for a in n.attribute if a.name == "mode"}
    assert modes == {b"nearest"}


def test_det_and_rec_have_scalar_affine_after_convs():
    # PP-LCNetV3's learnable affine: Mul by a 1-element Constant then Add of one, after a Conv.
    for kind, want in (("det", 28), ("rec", 28)):
        g = _Graph(cases.load_ppocr(kind))
        found = sum(1 for n in g.nodes if n.op_type == "Mul" and g.scalar(n.input[0]) is not None
                    and g.op(n.input[1]) == "Conv")
        assert found == want, kind


def test_ctc_decode_merges_repeats_and_drops_blanks():
    # per step best classes: a a blank a b b blank -> "a a b" (a blank splits two a's)
    steps = [1, 1, 0, 1, 2, 2, 0]
    probs = np.full((1, len(steps), 4), 0.1, np.float32)
    probs[0, np.arange(len(steps)), steps] = 0.7
    assert ppocr.ctc_decode(probs) == [(1, 1, 2)]
    assert ppocr.ctc_decode(probs, ["<blank>", "a", "b", " "]) == ["aab"]
    assert ppocr.ctc_decode(np.zeros((2, 3, 4), np.float32)) == [(), ()]  # all blank (argmax 0)


def test_rec_characters_come_from_the_models_metadata():
    chars = ppocr.rec_characters(cases.load_ppocr("rec"))
    assert len(chars) == 6625 and chars[0] == "<blank>" and chars[-1] == " "
    assert len(set(chars[1:-1])) == 6623  # one class per dictionary entry
    with pytest.raises(ValueError, match="character"):
        ppocr.rec_characters(cases.load_ppocr("cls"))


def test_unknown_kind_is_refused():
    with pytest.raises(KeyError, match="det"):
        ppocr.ppocr_path("table")


def _fake_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOF_CACHE", str(tmp_path))
    # Any attempt to reach the network fails: pip is replaced by a command that exits 1.
    run_pip = ppocr._run_pip
    monkeypatch.setattr(ppocr, "_run_pip", lambda cmd: run_pip([sys.executable, "-c", "raise SystemExit(1)"]))


def test_offline_without_a_wheel_raises_a_typed_error_naming_the_command(tmp_path, monkeypatch):
    _fake_cache(tmp_path, monkeypatch)
    with pytest.raises(ppocr.PPOCRUnavailableError, match="pip download") as info:
        ppocr.ppocr_path("cls")
    assert ppocr.WHEEL_NAME in str(info.value)
    assert not list((tmp_path / "ppocr").glob("*.onnx"))


def test_a_wheel_placed_in_the_cache_is_used_offline(tmp_path, monkeypatch):
    sources = {k: ppocr.ppocr_path(k) for k in ppocr.KINDS}  # the real cache, fetched if needed
    _fake_cache(tmp_path, monkeypatch)
    (tmp_path / "ppocr").mkdir()
    with zipfile.ZipFile(tmp_path / "ppocr" / ppocr.WHEEL_NAME, "w") as zf:
        for kind, src in sources.items():
            zf.write(src, "rapidocr_onnxruntime/models/" + ppocr.PPOCR_FILES[kind])
    for kind in ppocr.KINDS:
        path = ppocr.ppocr_path(kind)
        assert path.parent == tmp_path / "ppocr"
        assert path.read_bytes() == sources[kind].read_bytes()


def test_a_tampered_wheel_is_rejected(tmp_path, monkeypatch):
    _fake_cache(tmp_path, monkeypatch)
    (tmp_path / "ppocr").mkdir()
    with zipfile.ZipFile(tmp_path / "ppocr" / ppocr.WHEEL_NAME, "w") as zf:
        for fname in ppocr.PPOCR_FILES.values():
            zf.writestr("rapidocr_onnxruntime/models/" + fname, b"not the model")
    with pytest.raises(ppocr.PPOCRUnavailableError, match="SHA-256"):
        ppocr.ppocr_path("det")
    assert not list((tmp_path / "ppocr").glob("*.onnx"))

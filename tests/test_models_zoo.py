"""models.zoo: every net exports with both torch exporters to a valid ONNX file that ONNX Runtime
runs to the torch model's outputs, with the structure the model claims to have."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from models import zoo
from tests import cases, helpers

TORCH_TOL = 1e-4  # ORT vs torch: different kernels and a folded BN, so not bit-exact


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _torch_outputs(name: str, x: np.ndarray, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = zoo.build(name)(torch.from_numpy(x))
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    return {o.name: t.numpy() for o, t in zip(model.graph.output, outs)}


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_case_list_names_every_zoo_model():
    assert cases.ZOO_NAMES == zoo.NAMES
    assert {e for _, e in cases.ZOO_CASES} == set(zoo.EXPORTERS)


def test_export_is_valid_self_contained_with_a_symbolic_batch(zoo_model):
    name, _, model, shape = zoo_model
    onnx.checker.check_model(model, full_check=True)
    assert all(i.data_location != onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    assert len(model.graph.initializer) > 0
    assert [i.name for i in model.graph.input] == ["input"]
    assert _dims(model.graph.input[0]) == ["batch", *shape[1:]]
    assert [o.name for o in model.graph.output] == zoo.output_names(name)


@pytest.mark.parametrize("batch", [2, 3])
def test_onnx_runtime_agrees_with_torch(zoo_model, batch):
    name, _, model, _ = zoo_model
    feeds = helpers.random_inputs(model, seed=batch, batch=batch)
    got = helpers.run(model, feeds)
    want = _torch_outputs(name, feeds["input"], model)
    assert all(v.shape[0] == batch for v in got.values())
    assert helpers.max_rel_err(want, got) <= TORCH_TOL


def _conv_attrs(model):
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose"):
            yield n, _attrs(n), list(inits[n.input[1]].dims)


def _depthwise(model, k):
    return [n for n, a, w in _conv_attrs(model)
            if n.op_type == "Conv" and a.get("group", 1) > 1 and w[1] == 1 and w[2:] == [k, k]]


# What each net is in the zoo for: the structures a pass must cope with. Ops that the two exporters
# spell differently (Flatten vs Reshape, GlobalAveragePool vs ReduceMean, Split vs Slice) are
# checked with alternatives.
STRUCTURE = {
    "resnet_basic": lambda m, c: (c["Conv"] == 21 and c["Add"] == 9
                                  and sum(w[2:] == [1, 1] for _, _, w in _conv_attrs(m)) == 2),
    "resnet_bottleneck": lambda m, c: (c["Add"] == 6 and c["Conv"] == 22
                                       and sum(w[2:] == [1, 1] for _, _, w in _conv_attrs(m)) == 15),
    "vgg": lambda m, c: c["Conv"] == 6 and c["MaxPool"] == 3 and c["Gemm"] == 2,
    "mobilenet_v2": lambda m, c: len(_depthwise(m, 3)) == 7 and c["Clip"] == 15 and c["Add"] == 3,
    "mobilenet_v3": lambda m, c: (len(_depthwise(m, 5)) == 3 and len(_depthwise(m, 3)) == 4
                                  and c["HardSwish"] >= 1 and c["HardSigmoid"] == 4 and c["Mul"] == 4),
    "yolo": lambda m, c: (c["Concat"] == 8 and c["MaxPool"] == 3 and c["Resize"] == 1
                          and c["Sigmoid"] == 29 and c["Mul"] >= 29 and (c["Split"] == 5 or c["Slice"] == 10)),
    "unet": lambda m, c: c["ConvTranspose"] == 2 and c["Concat"] == 2 and c["MaxPool"] == 2,
    "mtcnn": lambda m, c: (c["PRelu"] == 5 and c["Gemm"] == 4 and c["Softmax"] == 1
                           and all(not any(a.get("pads", [0])) for _, a, _ in _conv_attrs(m))
                           and [_attrs(n)["perm"] for n in m.graph.node if n.op_type == "Transpose"] == [[0, 3, 2, 1]]
                           and all(_attrs(n).get("ceil_mode") == 1 for n in m.graph.node if n.op_type == "MaxPool")),
    "conv1d": lambda m, c: c["Conv"] == 6 and all(len(w) == 3 for _, _, w in _conv_attrs(m)),
    "conv3d": lambda m, c: c["Conv"] == 6 and all(len(w) == 5 for _, _, w in _conv_attrs(m)),
}


def test_export_has_the_structure_the_model_is_there_for(zoo_model):
    name, exporter, model, _ = zoo_model
    counts = helpers.op_counts(model)
    assert STRUCTURE[name](model, {k: counts.get(k, 0) for k in set(counts) | {
        "Add", "Clip", "Concat", "Conv", "ConvTranspose", "Gemm", "HardSigmoid", "HardSwish", "MaxPool",
        "Mul", "PRelu", "Resize", "Sigmoid", "Slice", "Softmax", "Split"}}), (name, exporter, counts)
    # Both exporters fold eval-mode BN; the zoo_bn_model fixture is the unfused variant.
    assert "BatchNormalization" not in counts


def test_keep_bn_export_keeps_every_batchnorm_and_still_agrees(zoo_bn_model):
    name, model, _ = zoo_bn_model
    onnx.checker.check_model(model, full_check=True)
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in zoo.build(name).modules())
    assert helpers.op_counts(model).get("BatchNormalization", 0) == n_bn
    feeds = helpers.random_inputs(model, seed=5)
    assert helpers.max_rel_err(_torch_outputs(name, feeds["input"], model), helpers.run(model, feeds)) <= TORCH_TOL


@pytest.mark.parametrize("name", zoo.NAMES)
def test_build_is_deterministic_small_and_has_nontrivial_batchnorm(name):
    a, b, c = zoo.build(name, seed=0), zoo.build(name, seed=0), zoo.build(name, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert not a.training
    assert zoo.param_count(a) <= 400_000
    for m in a.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            assert not torch.allclose(m.running_var, torch.ones_like(m.running_var))
            assert not torch.allclose(m.running_mean, torch.zeros_like(m.running_mean))
            assert not torch.allclose(m.weight, torch.ones_like(m.weight))
    x = torch.randn(zoo.input_shape(name))
    with torch.no_grad():
        out = a(x)
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    assert all(o.shape[0] == 1 and torch.isfinite(o).all() and o.abs().max() > 0 for o in outs)


def test_building_does_not_disturb_the_global_rng():
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    zoo.build("vgg", seed=7)
    assert torch.equal(torch.rand(3), want)


def test_export_is_cached_on_disk_and_a_corrupt_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOF_CACHE", str(tmp_path))
    first = zoo.export("conv1d", "torchscript")
    path = zoo.cache_path("conv1d", "torchscript")
    assert path.is_file() and path.parent == tmp_path / "zoo"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind

    def no_export(*args, **kwargs):
        raise AssertionError("cache hit expected")

    real_export = zoo._export_to
    monkeypatch.setattr(zoo, "_export_to", no_export)
    assert zoo.export("conv1d", "torchscript") == first
    path.write_bytes(b"not onnx")
    monkeypatch.setattr(zoo, "_export_to", real_export)
    assert zoo.export("conv1d", "torchscript") == first
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def test_static_batch_and_opset_options(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOF_CACHE", str(tmp_path))
    model = zoo.export("conv1d", "torchscript", opset=17, dynamic_batch=False)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert _dims(model.graph.input[0]) == list(zoo.input_shape("conv1d"))


def test_bad_requests_are_refused_with_reasons():
    with pytest.raises(KeyError, match="resnet_basic"):
        zoo.build("resnet18")
    with pytest.raises(ValueError, match="exporter"):
        zoo.export("vgg", "tf")
    with pytest.raises(ValueError, match="dynamo"):
        zoo.export("vgg", "dynamo", keep_bn=True)


def test_resnet50_size_is_resnet50_shaped():
    model = zoo.resnet50_size()
    assert 25_000_000 <= zoo.param_count(model) <= 26_000_000
    blocks = [m for m in model.modules() if isinstance(m, zoo.Bottleneck)]
    assert len(blocks) == 16
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)

"""The learning stage's pieces: losses, teacher outputs, fine-tune with masks fixed, quality."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import pytest

torch = pytest.importorskip("torch")

from smof_onnx.data import as_calibration  # noqa: E402
from smof_onnx.learn import train  # noqa: E402
from smof_onnx.learn.batches import epoch_batches  # noqa: E402
from smof_onnx.learn.executor import OnnxModule  # noqa: E402
from smof_onnx.selection.select import prepare  # noqa: E402
from smof_onnx.methods import CompressConfig  # noqa: E402
from tests.test_selection_gates import tiny_cnn, tiny_cnn_batch_one  # noqa: E402


def test_distillation_is_zero_for_the_teacher_itself_and_positive_otherwise():
    t = (torch.randn(6, 5), torch.randn(6, 2, 4, 4))
    kinds = train.output_kinds(t)
    assert kinds == ["logits", "dense"]
    assert float(train.distill_loss(t, t, kinds)) == pytest.approx(0.0, abs=1e-7)
    s = (t[0] + torch.randn(6, 5), t[1] * 0.5)
    loss = train.distill_loss(s, t, kinds)
    assert float(loss) > 0.25  # the normalised MSE of a halved output alone is 0.25
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    assert float(train.task_loss(s, t, kinds, labels)) > float(loss)


def test_a_per_position_distribution_is_distilled_by_kl_on_its_last_axis():
    """A recogniser's [N, T, C] softmax: KL(t || s) averaged over the N*T positions, zero for
    the teacher itself, and the exact value of a hand-computed case."""
    t = torch.softmax(torch.randn(3, 5, 7), -1)
    assert train.output_kinds((t, t.sum(-1, keepdim=True))) == ["distribution", "dense"]
    assert train.output_kinds((torch.rand(3, 5, 7),)) == ["dense"]  # rows that do not sum to 1
    assert float(train.distill_loss((t,), (t,), ["distribution"])) == pytest.approx(0.0, abs=1e-6)
    s = torch.softmax(torch.randn(3, 5, 7), -1)
    want = float((t * (t.log() - s.log())).sum() / 15)
    assert float(train.distill_loss((s,), (t,), ["distribution"])) == pytest.approx(want, rel=1e-5)


def test_a_classifier_that_ends_in_softmax_is_distilled_through_its_logits():
    """Probabilities [N, C] are read as log p: the loss equals the loss of the logits they came
    from (at T = 1 and T = 4, with labels), where a softmax of the probabilities would not."""
    zs, zt = torch.randn(6, 5) * 3, torch.randn(6, 5) * 3
    ps, pt = torch.softmax(zs, 1), torch.softmax(zt, 1)
    assert train.output_kinds((pt, zt)) == ["probs", "logits"]
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    for temperature in (1.0, 4.0):
        want = float(train.task_loss((zs,), (zt,), ["logits"], labels, temperature))
        got = float(train.task_loss((ps,), (pt,), ["probs"], labels, temperature))
        assert got == pytest.approx(want, rel=1e-4)
    softmax_of_probs = float(train.distill_loss((ps,), (pt,), ["logits"]))
    assert softmax_of_probs < 0.5 * float(train.distill_loss((ps,), (pt,), ["probs"]))
    q = train.evaluate([pt], [ps], labels.numpy(), "val")
    assert q["metric"] == "accuracy" and q["outputs"]["output_0"]["kind"] == "classifier"


def test_feature_taps_are_the_inputs_of_the_nodes_that_lower_the_resolution():
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 3, 16, 16] x) => (float[N, 4] y) <float[4, 3, 3, 3] w1, float[4, 4, 3, 3] w2, float[4, 4, 1, 1] w3> {
            p0 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (x)
            c1 = Conv <pads = [1, 1, 1, 1]> (p0, w1)
            r1 = Relu (c1)
            c2 = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (r1, w2)
            r2 = Relu (c2)
            c3 = Conv (r2, w3)
            p = GlobalAveragePool (c3)
            y = Flatten (p)
        }""")
    # x feeds a pooling too, but it is a graph input: nothing of the student's to match there
    assert train.feature_taps(model) == ["r1", "c3"]


def test_feature_taps_of_an_inverted_residual_are_what_the_block_reads():
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 3, 16, 16] x) => (float[N, 8, 8, 8] y)
          <float[4, 3, 3, 3] w1, float[8, 4, 1, 1] expand, float[8, 1, 3, 3] dw, float[8, 8, 3, 3] w4> {
            c1 = Conv <pads = [1, 1, 1, 1]> (x, w1)
            s = Relu (c1)
            e = Conv (s, expand)
            a = Clip (e)
            d = Conv <group = 8, pads = [1, 1, 1, 1], strides = [2, 2]> (a, dw)
            r = Relu (d)
            y = Conv <pads = [1, 1, 1, 1], strides = [1, 1]> (r, w4)
        }""")
    shapes = {"w1": (4, 3, 3, 3), "expand": (8, 4, 1, 1), "dw": (8, 1, 3, 3), "w4": (8, 8, 3, 3)}
    model.graph.initializer.extend(onnx.numpy_helper.from_array(np.ones(v, np.float32), k) for k, v in shapes.items())
    # the expansion's 8 channels are inner ones: the stage output is s, what the block reads
    assert train.feature_taps(model) == ["s"]


def test_feature_loss_is_zero_on_the_teacher_and_blind_to_removed_channels():
    t = {"a": torch.randn(4, 3, 5, 5), "b": torch.randn(4, 6, 2, 2)}
    assert float(train.feature_loss(t, t)) == pytest.approx(0.0, abs=1e-7)
    s = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    with torch.no_grad():
        s["a"][:, 1] = 0  # a channel the gates removed
    loss = train.feature_loss(s, t)
    assert float(loss.detach()) > 0
    loss.backward()
    assert float(s["b"].grad.abs().sum()) == 0.0  # equal tensors pull on nothing
    assert float(s["a"].grad[:, [0, 2]].abs().sum()) == 0.0


def test_make_batch_gives_the_teacher_taps_of_the_whole_mixed_batch():
    p, data = _problem_and_data(n=16)
    teacher_module, student = OnnxModule(p.model).eval(), OnnxModule(p.model).eval()
    settings = train.TrainSettings(search_epochs=0, finetune_epochs=1, lr=1e-3, batch_size=8, seed=0,
                                   progress=False, feature_weight=1.0)
    taps = train.attach_feature_taps(student, teacher_module, p.model, settings)
    assert taps == train.feature_taps(p.model) and taps and student.taps == teacher_module.taps == set(taps)
    teacher = train.teacher_outputs(teacher_module, data, 8)
    del teacher  # the targets are computed per batch by make_batch
    from smof_onnx.learn.batches import feeds_of

    feeds, _, _, tapped = train.make_batch(feeds_of(data, student.input_names, np.arange(8)), None, teacher_module,
                                           torch.Generator().manual_seed(0), mix=True)
    student(*feeds)  # the student is still the teacher: its taps equal the teacher's
    assert set(tapped) == set(taps)
    for name in taps:
        assert tapped[name].shape[0] == 16  # 8 samples + 8 mixes
        assert torch.allclose(student.tapped[name], tapped[name], atol=1e-5)
    off = dataclasses.replace(settings, feature_weight=0.0)
    a, b = OnnxModule(p.model), OnnxModule(p.model)
    assert train.attach_feature_taps(a, b, p.model, off) == [] and not a.taps and not b.taps


def test_attach_feature_taps_leaves_out_what_the_teacher_does_not_compute():
    """A teacher that is another graph (a method's zeroed copy against the original) may lack
    a stage output of the student's graph: that tap is left out, the rest are kept."""
    p, _ = _problem_and_data(n=8)
    taps = train.feature_taps(p.model)
    renamed = onnx.ModelProto()
    renamed.CopyFrom(p.model)
    for node in renamed.graph.node:
        node.output[:] = [o + "_t" if o == taps[0] else o for o in node.output]
        node.input[:] = [i + "_t" if i == taps[0] else i for i in node.input]
    settings = train.TrainSettings(search_epochs=0, finetune_epochs=1, lr=1e-3, batch_size=8, seed=0,
                                   progress=False, feature_weight=1.0)
    student, teacher_module = OnnxModule(p.model), OnnxModule(renamed)
    kept = train.attach_feature_taps(student, teacher_module, p.model, settings)
    assert kept == taps[1:] and student.taps == teacher_module.taps == set(taps[1:])


def test_make_settings_aims_at_a_fixed_number_of_steps():
    cfg = CompressConfig(batch_size=64)
    assert train.make_settings(cfg, 512).search_epochs == 38      # 8 steps per epoch
    assert train.make_settings(cfg, 4096).search_epochs == 5      # 64 steps per epoch
    assert train.make_settings(cfg, 512).finetune_epochs == 75    # twice the steps: 600
    assert train.make_settings(cfg, 4096).finetune_epochs == 10
    fixed = train.make_settings(CompressConfig(epochs=2, finetune_epochs=0, lr=0.01), 512)
    assert (fixed.search_epochs, fixed.finetune_epochs, fixed.lr) == (2, 0, 0.01)
    assert fixed.feature_weight == train.FEATURE_WEIGHT
    assert train.make_settings(CompressConfig(feature_distill=0), 512).feature_weight == 0


def _problem_and_data(n=48):
    p = prepare(tiny_cnn(), None, multiple=1)
    rng = np.random.default_rng(0)
    data = as_calibration({"x": rng.standard_normal((n, 3, 8, 8)).astype(np.float32)}, p.model)
    return p, data


def test_finetune_keeps_dropped_gates_dropped_and_reduces_the_loss():
    p, data = _problem_and_data()
    settings = train.TrainSettings(search_epochs=0, finetune_epochs=6, lr=3e-3, batch_size=16, seed=0, progress=False)
    teacher = train.teacher_outputs(OnnxModule(p.model), data, 16)
    h = np.ones(p.space.size)
    h[list(p.space.families[1].gates[:8])] = 0
    h[[g.index for g in p.space.kernel if g.node == "conv2"]] = 0
    student = OnnxModule(p.model)

    def loss_of(model):
        out = train.predict(OnnxModule(model), data, 16)
        return float(train.distill_loss(out, teacher, ["logits"]))

    before = loss_of(p.space.apply(p.model, h))
    train.finetune(p, student, data, teacher, h, settings)
    zeroed = p.space.apply(student.state_to_onnx(p.model), h)
    after = loss_of(zeroed)
    assert after < before
    # zeroing after training is what the masks computed: the dropped filters are zero
    w3 = next(i for i in zeroed.graph.initializer if i.name == "w3")
    from onnx import numpy_helper
    dropped = [p.space.channel[g - len(p.space.kernel)].producers[0][2] for g in p.space.families[1].gates[:8]]
    assert not numpy_helper.to_array(w3)[dropped].any()


def test_finetune_with_batchnorm_exports_what_the_pruned_network_computes(monkeypatch):
    """The normalisers are recalibrated with the gates in place and folded: the zeroed export
    agrees with the masked module (a recalibration without the gates gave 10% accuracy)."""
    p, data = _problem_and_data(64)
    settings = train.TrainSettings(search_epochs=0, finetune_epochs=3, lr=3e-3, batch_size=16, seed=0, progress=False)
    teacher = train.teacher_outputs(OnnxModule(p.model), data, 16)
    h = np.ones(p.space.size)
    h[list(p.space.families[0].gates[:4])] = 0
    h[[g.index for g in p.space.kernel if g.node == "conv3"][:1]] = 0
    student = OnnxModule(p.model)
    bn = train.attach_batchnorm(student, data, settings)
    assert bn is not None and len(bn) == 3
    fold, gated = train.fold_batchnorm, []

    def fold_checking_gates(*args):
        gated.append(bool(student._hooks) and bool(student._transforms))  # the gates are in place
        fold(*args)

    from smof_onnx.learn import finetune as finetune_module
    monkeypatch.setattr(finetune_module, "fold_batchnorm", fold_checking_gates)
    train.finetune(p, student, data, teacher, h, settings, bn=bn)
    assert gated == [True]
    assert not hasattr(student, "train_norms") and not student.training
    zeroed = p.space.apply(student.state_to_onnx(p.model), h)
    x = torch.from_numpy(data.inputs["x"])
    from smof_onnx.learn.masking import Masks
    masks = Masks(p.space, student, h)
    with torch.no_grad():
        expected = student(x)[0]
    masks.remove()
    got = OnnxModule(zeroed)(x)[0].detach()
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5


def test_search_scores_rank_every_gate_and_are_seeded():
    p, data = _problem_and_data()
    settings = train.TrainSettings(search_epochs=2, finetune_epochs=0, lr=1e-3, batch_size=16, seed=0, progress=False)
    teacher = train.teacher_outputs(OnnxModule(p.model), data, 16)
    a = train.search(p, OnnxModule(p.model), data, teacher, 0.5, settings)
    b = train.search(p, OnnxModule(p.model), data, teacher, 0.5, settings)
    assert a.shape == (p.space.size,) and np.isfinite(a).all() and np.ptp(a) > 0
    np.testing.assert_array_equal(a, b)


def test_evaluate_reports_accuracy_with_labels_and_agreement_without():
    before = [torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 1.0]])]
    after = [torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 1.0]])]
    q = train.evaluate(before, after, np.array([0, 1, 1, 1]), "val")
    assert q["metric"] == "accuracy" and q["accuracy_before"] == 0.75 and q["accuracy_after"] == 0.5
    assert q["top1_agreement"] == 0.75
    q = train.evaluate(before, after, None, "val")
    assert q["metric"] == "top1_agreement" and q["top1_agreement"] == 0.75
    dense = train.evaluate([torch.ones(2, 1, 4, 4)], [torch.full((2, 1, 4, 4), 1.1)], None, "val")
    assert dense["metric"] == "relative_rms_error" and dense["relative_rms_error"] == pytest.approx(0.1, rel=1e-5)
    assert dense["relative_error"] == pytest.approx(0.1, rel=1e-5)
    assert dense["mask_iou"] == 1.0  # the original (all 1.0) lies in [0, 1]: a probability map
    assert "mask_iou" not in train.evaluate([torch.full((2, 1, 4, 4), 2.0)], [torch.ones(2, 1, 4, 4)], None, "val")


def test_evaluate_dense_maps_error_over_the_whole_map_and_mask_iou():
    """A probability map where one pixel of 32 flips from 0.9 to 0: the worst-case error is 1.0,
    the whole-map error is small, and the thresholded masks overlap in 3 of 4 pixels."""
    before = torch.zeros(2, 1, 4, 4)
    before[0, 0, 0, :2] = 0.9
    before[1, 0, 0, :2] = 0.9
    after = before.clone()
    after[0, 0, 0, 0] = 0.0
    q = train.evaluate([before], [after], None, "val")
    assert q["metric"] == "relative_rms_error"
    assert q["relative_error"] == pytest.approx(1.0)
    assert q["relative_rms_error"] == pytest.approx(0.5)  # sqrt(0.81) / sqrt(4 * 0.81)
    assert q["mask_iou"] == pytest.approx(3 / 4) and q["mask_threshold"] == train.MASK_THRESHOLD


def test_evaluate_per_position_distributions_gives_step_and_sequence_agreement():
    """Two lines of three steps: one step of the second line changes its best class, so 5 of 6
    steps agree and 1 of 2 lines reads the same everywhere."""
    before = torch.tensor([[[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]],
                           [[0.1, 0.9], [0.9, 0.1], [0.2, 0.8]]])
    after = before.clone()
    after[1, 2] = torch.tensor([0.7, 0.3])
    q = train.evaluate([before], [after], None, "val", ["probs"])
    assert q["metric"] == "sequence_agreement"
    assert q["top1_agreement"] == pytest.approx(5 / 6) and q["sequence_agreement"] == pytest.approx(0.5)
    assert q["outputs"]["probs"]["kind"] == "distribution" and "mask_iou" not in q["outputs"]["probs"]


def test_finetune_fixed_keeps_zeros_at_zero_and_reduces_the_loss():
    """A zeroed tiny model (half of conv3's filters, conv2's outer ring) fine-tuned from labels
    (its own outputs as the teacher give no signal at the start): every zero weight stays
    exactly zero, so does the bias of every dead channel (the train-mode BN's shift is held at
    0 there), the cut removes exactly what it removed before, everything else may move, and
    the loss against the labels goes down."""
    from onnx import numpy_helper

    from smof_onnx.passes import graph as pgraph
    from smof_onnx.passes import pipeline
    from smof_onnx.passes.analysis.flops import count_cost

    p, data = _problem_and_data(64)
    labels = np.random.default_rng(1).integers(0, 5, 64)
    h = np.ones(p.space.size)
    h[list(p.space.families[1].gates[:8])] = 0
    h[[g.index for g in p.space.kernel if g.node == "conv2"]] = 0
    zeroed = p.space.apply(p.model, h)
    # and conv2's filter 0 with its bias: no ReLU between conv2 and the residual Add, so only
    # the BN shift held at 0 keeps that output channel at 0
    conv2 = next(n for n in zeroed.graph.node if n.name == "conv2")
    for init in zeroed.graph.initializer:
        if init.name in conv2.input[1:3]:
            arr = numpy_helper.to_array(init).copy()
            arr[0] = 0
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    arrays = {"x": data.inputs["x"], "labels": labels}
    tuned = train.finetune_fixed(zeroed, arrays, 8, lr=3e-3, batch_size=16, progress_bars=False)
    before = {i.name: numpy_helper.to_array(i) for i in zeroed.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in tuned.graph.initializer}
    assert set(before) == set(after)
    moved = 0
    for name, b in before.items():
        a = after[name]
        assert a.shape == b.shape, name
        if b.ndim > 1:
            assert not a[b == 0].any(), name
            dead = (b.reshape(b.shape[0], -1) == 0).all(1)
            bias = [n.input[2] for n in zeroed.graph.node if n.op_type == "Conv" and n.input[1] == name]
            if bias and dead.any():
                assert not after[bias[0]][dead & (before[bias[0]] == 0)].any(), bias[0]
        moved += int((a != b).any())
    assert moved >= 4

    def cut_shapes(model):
        cut = pgraph.to_model(pipeline.cut(pgraph.to_graph(model), p.shapes).graph)
        return count_cost(cut, p.shapes).flops, sorted(tuple(i.dims) for i in cut.graph.initializer)

    assert cut_shapes(tuned) == cut_shapes(zeroed)
    assert cut_shapes(zeroed)[0] < count_cost(p.model, p.shapes).flops

    def ce(model):
        logits = train.predict(OnnxModule(model), data, 16)[0]
        return float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)))

    assert ce(tuned) < ce(zeroed)
    again = train.finetune_fixed(zeroed, arrays, 8, lr=3e-3, batch_size=16, progress_bars=False)
    assert again.SerializeToString() == tuned.SerializeToString()  # seeded
    assert train.finetune_fixed(zeroed, arrays, 0).SerializeToString() == zeroed.SerializeToString()

    # with the stage outputs distilled too (from the original, which has the same tensor
    # names): other weights, the same zeros
    staged = train.finetune_fixed(zeroed, arrays, 8, lr=3e-3, batch_size=16, progress_bars=False,
                                  teacher=p.model, feature_distill=1.0)
    plain = train.finetune_fixed(zeroed, arrays, 8, lr=3e-3, batch_size=16, progress_bars=False, teacher=p.model)
    assert train.feature_taps(zeroed)
    assert staged.SerializeToString() != plain.SerializeToString()
    assert cut_shapes(staged) == cut_shapes(zeroed)


def test_teacher_outputs_of_a_batch_one_model_go_one_sample_at_a_time():
    model = tiny_cnn_batch_one()
    module = OnnxModule(model).eval()
    assert module.model_batch == 1
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    out = train.teacher_outputs(module, as_calibration({"x": x}, model), 4)[0]
    reference = OnnxModule(tiny_cnn()).eval()
    with torch.no_grad():
        want = reference(torch.from_numpy(x))[0]
    assert out.shape == (5, 5)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def test_whole_batches_fill_the_last_batch_of_an_epoch_from_its_start():
    data = as_calibration({"x": np.zeros((10, 3, 8, 8), np.float32)}, tiny_cnn())
    settings = train.TrainSettings(search_epochs=1, finetune_epochs=1, lr=1e-3, batch_size=4, seed=0,
                                   whole_batches=True)
    batches = epoch_batches(data, settings)
    epoch = [next(batches) for _ in range(3)]
    assert [len(b) for b in epoch] == [4, 4, 4]
    assert set(np.concatenate(epoch)) == set(range(10))
    plain = epoch_batches(data, dataclasses.replace(settings, whole_batches=False))
    assert [len(next(plain)) for _ in range(3)] == [4, 4, 2]


def test_finetune_fixed_trains_a_batch_one_export_in_batches_and_keeps_its_interface():
    """The Reshape to [1, -1] fails on a batch of 16 unless the batch is freed for training
    (:mod:`smof_onnx.batching`); the result is the user's graph, batch 1, with new weights."""
    model = tiny_cnn_batch_one()
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((32, 3, 8, 8)).astype(np.float32), "labels": rng.integers(0, 5, 32)}
    tuned = train.finetune_fixed(model, arrays, 1, batch_size=16, progress_bars=False)
    assert [d.dim_value for d in tuned.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 8, 8]
    shape = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in tuned.graph.initializer}["flat_shape"]
    assert shape == [1, -1]
    before = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    after = {i.name: onnx.numpy_helper.to_array(i) for i in tuned.graph.initializer}
    assert set(before) == set(after) and not np.array_equal(before["w1"], after["w1"])
    onnx.checker.check_model(tuned)


def test_labels_out_of_the_classifiers_range_are_refused_before_training():
    from smof_onnx.errors import DataError

    teacher = [torch.randn(4, 10)]
    train.check_labels(np.array([0, 9, 3, 1]), teacher)  # in range: nothing to say
    train.check_labels(None, teacher)
    train.check_labels(np.array([50, 60]), [torch.randn(2, 1, 4, 4)])  # no classifier output: unused
    with pytest.raises(DataError, match="labels go up to 108, but the model's classifier output has 10"):
        train.check_labels(np.array([100, 108, 3, 1]), teacher)


def test_quality_lists_every_output_and_warns_on_a_small_split():
    before = [torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]), torch.full((3, 1, 2, 2), 0.9)]
    after = [torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0]]), torch.full((3, 1, 2, 2), 0.3)]
    q = train.evaluate(before, after, None, "val", ["logits", "mask"])
    assert set(q["outputs"]) == {"logits", "mask"}
    assert q["outputs"]["logits"]["top1_agreement"] == pytest.approx(2 / 3) and "mask_iou" not in q["outputs"]["logits"]
    assert q["outputs"]["mask"]["mask_iou"] == 0.0 and q["outputs"]["mask"]["relative_rms_error"] == pytest.approx(2 / 3)
    assert q["relative_rms_error"] == max(o["relative_rms_error"] for o in q["outputs"].values())
    assert "3 sample(s)" in q["warnings"][0]
    many = train.evaluate([torch.ones(40, 3)], [torch.ones(40, 3)], None, "val")
    assert "warnings" not in many and set(many["outputs"]) == {"output_0"}

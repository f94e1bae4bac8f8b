"""Fuzzing ``smof_onnx.api.compress`` with random CNN-like graphs (tests/graphgen.py).

Contract: ``compress(model, method="l2" | "qr", target_flops=F)`` either returns a model whose
report says ``flops.ratio <= F + 0.01`` (and which passed the exactness gate: the report's
``verify.max_rel_err <= 1e-5``, interface kept), or raises a :class:`smof_onnx.errors.SmofError`
subclass with a message (a target it cannot meet, a graph it cannot handle). Any other
exception type is a bug. The generated graphs carry random zeros of their own; ``qr`` gets
random calibration data of the model's input shape.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smof_onnx import api
from smof_onnx.errors import SmofError
from tests import graphgen
from tests.helpers import REL_TOL
from tests.test_fuzz_cut import fuzz_settings


def _data(case: graphgen.Case, n: int = 8) -> dict[str, np.ndarray]:
    shape = list(case.shapes[case.input_name])
    if not case.free_batch:
        n = max(n // shape[0], 1) * shape[0]
    rng = np.random.default_rng(0)
    return {case.input_name: rng.standard_normal([n, *shape[1:]]).astype(np.float32)}


def check_compress(case: graphgen.Case, method: str, target: float) -> str:
    """Run the contract; returns "met" or the refusal's message (raises on a broken contract)."""
    data = _data(case) if method == "qr" else None
    try:
        model, report = api.compress(case.model, method=method, target_flops=target, data=data,
                                     input_shapes=case.shapes)
    except SmofError as exc:
        msg = str(exc)
        assert msg.strip(), f"{type(exc).__name__} without a message"
        return msg
    except Exception as exc:  # noqa: BLE001 -- the property: nothing but a SmofError may escape
        raise AssertionError(f"compress --method {method} --target-flops {target} raised "
                             f"{type(exc).__name__}: {exc}\n  {graphgen.describe(case)}") from exc
    ratio = report["flops"]["ratio"]
    assert ratio <= target + 0.01, (f"compress --method {method} returned flops ratio {ratio:.3f} for target "
                                    f"{target} without an error\n  {graphgen.describe(case)}")
    assert report["verify"]["max_rel_err"] <= REL_TOL
    assert [i.name for i in model.graph.input] == [i.name for i in case.model.graph.input]
    assert [o.name for o in model.graph.output] == [o.name for o in case.model.graph.output]
    return "met"


@pytest.mark.parametrize("method", ["l2", "qr"])
@fuzz_settings(0.25)
@given(case=graphgen.graphs(), target=st.sampled_from([0.3, 0.5, 0.8]))
def test_compress_meets_the_target_or_refuses_with_a_smof_error(method, case, target):
    check_compress(case, method, target)

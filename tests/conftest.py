"""Shared fixtures: every zoo export (both exporters) and the real PP-OCR models.

``zoo_model`` yields (name, exporter, onnx.ModelProto, input_shape with batch 1);
``zoo_bn_model`` yields (name, ModelProto with BatchNormalization nodes kept, input_shape);
``ppocr_model`` yields (kind, ModelProto, input_shape). Each test gets its own copy of the
proto (loading itself is cached per session in tests/cases.py), so editing it is safe.
"""
from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

from tests import cases

# Random-graph fuzzing (tests/test_fuzz_*.py): a small derandomized profile in the default run,
# a long one on demand (SMOF_FUZZ_PROFILE=fuzz-long; bench/fuzz.py runs it without pytest).
_FUZZ = dict(deadline=None, database=None, print_blob=True,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("fuzz-fast", max_examples=200, derandomize=True, **_FUZZ)
settings.register_profile("fuzz-long", max_examples=20000, derandomize=False, **_FUZZ)

# Two shared cores: keep every library single-threaded unless a test says otherwise. The env
# var reaches torch if it is imported later; importing torch here would slow every torch-free run.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_finish(session):
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@pytest.fixture(params=cases.ZOO_CASES, ids=cases.case_id)
def zoo_model(request):
    name, exporter = request.param
    return name, exporter, cases.load_zoo(name, exporter), cases.zoo_input_shape(name)


@pytest.fixture(params=cases.ZOO_BN_CASES)
def zoo_bn_model(request):
    name = request.param
    return name, cases.load_zoo(name, "torchscript", keep_bn=True), cases.zoo_input_shape(name)


@pytest.fixture(params=cases.PPOCR_CASES)
def ppocr_model(request):
    from models import ppocr
    kind = request.param
    return kind, cases.load_ppocr(kind), ppocr.PPOCR_SHAPES[kind]

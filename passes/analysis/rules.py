"""The op-type -> rule table of the channel analysis, validated at import.

``RULES[op_type]`` is a :class:`smof_onnx.passes.analysis.rulebase.Rule` of one category:

=============  =====================================================================
producer       Conv, ConvTranspose, Gemm, MatMul: outputs start a new space, inputs are
               read through the non-zero weights (grouped conv: groups are slots)
elementwise    activations and arithmetic with channel broadcast (Relu ... Mul, Add, Div)
normalization  BatchNormalization, InstanceNormalization (per-channel parameters)
route          Concat, Split, Slice (offsets and ranges on the channel axis)
layout         Flatten, Reshape, Transpose, Squeeze, Unsqueeze (feature blocks)
pooling        pooling, Resize/Upsample, Pad, spatial reductions (identity on channels)
=============  =====================================================================

An op absent from this table (LRN, DepthToSpace, LayerNormalization, Gather, Shape,
If/Loop/Scan, QLinearConv, DequantizeLinear, custom domains ...) freezes every
channel space it touches; :func:`smof_onnx.passes.analysis.channels.analyze_channels` records
the node and the reason. Each category's rules are in ``rules_<kind>.py``.
"""
from __future__ import annotations

from .rulebase import CATEGORIES, Rule
from .rules_elementwise import ELEMENTWISE, NORMALIZATION
from .rules_layout import LAYOUTS, ROUTES
from .rules_pooling import POOLING
from .rules_weighted import PRODUCERS

_BY_CATEGORY: dict[str, dict[str, Rule]] = {
    "producer": PRODUCERS,
    "elementwise": ELEMENTWISE,
    "normalization": NORMALIZATION,
    "route": ROUTES,
    "layout": LAYOUTS,
    "pooling": POOLING,
}


def _build(by_category: dict[str, dict[str, Rule]]) -> dict[str, Rule]:
    """Merge the per-category tables; reject an op in two categories or a malformed entry."""
    table: dict[str, Rule] = {}
    for category, rules in by_category.items():
        if category not in CATEGORIES:
            raise TypeError(f"unknown rule category {category!r}")
        for op, rule in rules.items():
            if not isinstance(op, str) or not op[:1].isupper():
                raise TypeError(f"rule key {op!r} is not an ONNX op type")
            if not isinstance(rule, Rule):
                raise TypeError(f"rule for {op} is {type(rule).__name__}, not a Rule")
            if op in table:
                raise ValueError(f"op {op} is in two categories: {table[op].category} and {category}")
            if rule.category != category:
                raise ValueError(f"rule for {op} says category {rule.category!r} but is listed under {category!r}")
            for method in ("couple", "zero", "drop"):
                if not callable(getattr(rule, method, None)):
                    raise TypeError(f"rule for {op} has no {method}()")
            if type(rule).couple is Rule.couple:
                raise TypeError(f"rule for {op} does not define couple()")
            table[op] = rule
    return table


RULES: dict[str, Rule] = _build(_BY_CATEGORY)

# Ops that must never be given a rule: their semantics are not per-channel or not float.
NEVER = frozenset({"If", "Loop", "Scan", "QLinearConv", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear",
                   "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "LRN", "DepthToSpace",
                   "SpaceToDepth", "LayerNormalization", "GroupNormalization", "Shape", "Gather"})
if NEVER & RULES.keys():
    raise ValueError(f"ops that must stay frozen have rules: {sorted(NEVER & RULES.keys())}")

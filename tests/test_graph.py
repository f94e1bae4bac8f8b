"""passes.graph helpers: attributes read as Python values with strings decoded."""
from __future__ import annotations

import onnx.helper as oh

from smof_onnx.passes.graph import node_attributes


def test_node_attributes_decode_strings_and_keep_numbers():
    node = oh.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2], group=4,
                        name="c")
    tags = oh.make_node("Custom", ["x"], ["y"], tags=["a", "bc"], scale=0.5)
    assert node_attributes(node) == {"auto_pad": "SAME_UPPER", "strides": [2, 2], "group": 4}
    assert node_attributes(tags) == {"tags": ["a", "bc"], "scale": 0.5}
    assert node_attributes(oh.make_node("Relu", ["x"], ["y"])) == {}

"""The pass protocol every graph rewrite follows.

A pass is a small class with one job. Calling it runs ``requires`` (the contract
on its input), ``call`` (the rewrite) and ``ensures`` (the contract on its output)
and returns a :class:`PassResult`. ``stats`` says what the pass removed or
changed, in JSON-serialisable form, so reports are built from pass results and
never recomputed.

Each pass module exposes one public function (e.g. ``cut_kernel_borders(graph)``)
that instantiates and runs its pass; the class is public too, for configuration.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import onnx_graphsurgeon as gs


class SmofError(Exception):
    """Base of every error this library raises on purpose."""


class ModelError(SmofError):
    """The input is not a usable ONNX model (missing, not ONNX, truncated, invalid)."""


class UnsupportedModelError(SmofError):
    """The model is valid ONNX but uses something a pass cannot handle safely."""


class PassError(SmofError):
    """A pass's contract was violated; names the pass and, where known, the node."""

    def __init__(self, pass_name: str, message: str, node: str | None = None):
        self.pass_name = pass_name
        self.node = node
        where = f" at node '{node}'" if node else ""
        super().__init__(f"[{pass_name}]{where}: {message}")


@dataclasses.dataclass
class PassResult:
    graph: gs.Graph
    changed: bool
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


class Pass(abc.ABC):
    """Base class: subclasses set ``name`` and implement ``call``."""

    name: ClassVar[str] = "pass"

    def requires(self, graph: gs.Graph) -> None:
        """Check preconditions; raise :class:`PassError` when unmet."""

    def ensures(self, graph: gs.Graph) -> None:
        """Check postconditions; raise :class:`PassError` when unmet."""

    @abc.abstractmethod
    def call(self, graph: gs.Graph) -> PassResult:
        ...

    def __call__(self, graph: gs.Graph) -> PassResult:
        self.requires(graph)
        result = self.call(graph)
        self.ensures(result.graph)
        return result

    def fail(self, message: str, node: gs.Node | str | None = None) -> PassError:
        name = node.name if isinstance(node, gs.Node) else node
        return PassError(self.name, message, name)

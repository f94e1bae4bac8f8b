"""The one place the order of the cut lives.

``canonicalize`` brings any exported graph to the form the analyses assume
(design 3.3)::

    constants_to_initializers -> fold_constants -> clone_shared_weights -> fuse_batchnorm
    -> fold_channel_affine -> explicit_pads -> eliminate_dead_nodes

Weights must be initializers before anything folds them; shared weights are cloned
before the folds edit them in place; pads are explicit before a kernel border moves
into them; dead nodes go last so the analyses see only live tensors.

``cut`` canonicalizes, then repeats one *round*::

    drop_zero_branches -> cut_dead_channels -> cut_kernel_borders -> eliminate_dead_nodes

until no pass of a round changes anything. Rounds repeat because each cut can
expose more: a dropped branch makes its producers unused, removed channels can
leave a kernel border whose only non-zero taps read removed inputs, and so on.
Every pass only removes things, so the loop converges; ``max_rounds`` bounds it
and a graph that still changes after it is a bug, reported as a
:class:`PassError` naming the passes that kept changing it.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Sequence

import onnx_graphsurgeon as gs

from .base import PassError, PassResult

CANONICAL_ORDER = ("constants_to_initializers", "fold_constants", "clone_shared_weights", "fuse_batchnorm",
                   "fold_channel_affine", "explicit_pads", "eliminate_dead_nodes")
CUT_ROUND = ("drop_zero_branches", "cut_dead_channels", "cut_kernel_borders", "eliminate_dead_nodes")
_TAKES_SHAPES = frozenset({"explicit_pads", "cut_kernel_borders", "cut_dead_channels", "drop_zero_branches"})
# Keys under which passes record what they refused to touch, and why.
_REFUSAL_KEYS = ("frozen", "refused", "skipped", "unsafe")

OnPass = Callable[[str, PassResult], None]


@dataclasses.dataclass(frozen=True)
class CutConfig:
    """What the cut may remove. ``max_rounds`` bounds the fixed-point loop."""

    kernel: bool = True
    channels: bool = True
    branches: bool = True
    max_rounds: int = 20

    def enabled(self, name: str) -> bool:
        return {"cut_kernel_borders": self.kernel, "cut_dead_channels": self.channels,
                "drop_zero_branches": self.branches}.get(name, True)


@dataclasses.dataclass
class PipelineResult:
    """The final graph and every pass's result, in the order they ran."""

    graph: gs.Graph
    results: list[tuple[str, PassResult]] = dataclasses.field(default_factory=list)
    rounds: int = 0

    @property
    def changed(self) -> bool:
        return any(r.changed for _, r in self.results)

    def merged_stats(self, pass_name: str) -> dict[str, Any]:
        """All rounds' stats of one pass merged: numbers add, lists concatenate, dicts merge."""
        merged: dict[str, Any] = {}
        for name, result in self.results:
            if name == pass_name:
                merged = _merge(merged, result.stats)
        return merged

    def frozen(self) -> list[dict[str, str]]:
        """Every refusal any pass recorded, as ``{"where", "reason", "pass"}``, without repeats."""
        seen, out = set(), []
        for name, result in self.results:
            for key in _REFUSAL_KEYS:
                for where, reason in _refusals(result.stats.get(key)):
                    if (where, reason) not in seen:
                        seen.add((where, reason))
                        out.append({"where": where, "reason": reason, "pass": name})
        return out

    def removed_channels(self) -> dict[str, Any]:
        return self.merged_stats("cut_dead_channels")

    def cut_kernels(self) -> dict[str, Any]:
        return self.merged_stats("cut_kernel_borders")

    def dropped_branches(self) -> dict[str, Any]:
        return self.merged_stats("drop_zero_branches")

    def summary(self) -> list[dict[str, Any]]:
        """Per pass (rounds merged): did it change anything, and its merged stats. JSON-ready."""
        names = list(dict.fromkeys(name for name, _ in self.results))
        return [{"pass": n, "changed": any(r.changed for m, r in self.results if m == n),
                 "stats": self.merged_stats(n)} for n in names]


def canonicalize(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None = None,
                 on_pass: OnPass | None = None) -> PipelineResult:
    """Run the canonical-form passes once, in order (see the module docstring)."""
    out = PipelineResult(graph)
    for name in CANONICAL_ORDER:
        out.graph = _run(name, out, input_shapes, on_pass)
    return out


def cut(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None = None,
        config: CutConfig = CutConfig(), on_pass: OnPass | None = None) -> PipelineResult:
    """Canonicalize, then repeat the cut round until nothing changes (see the module docstring)."""
    out = canonicalize(graph, input_shapes, on_pass)
    steps = [name for name in CUT_ROUND if config.enabled(name)]
    for round_ in range(1, config.max_rounds + 1):
        out.rounds = round_
        start = len(out.results)
        for name in steps:
            out.graph = _run(name, out, input_shapes, on_pass)
        changed_by = [name for name, r in out.results[start:] if r.changed]
        if not changed_by:
            return out
    raise PassError("pipeline", f"the cut did not converge after {config.max_rounds} rounds; "
                    f"the last round was still changed by {changed_by}")


def _run(name: str, out: PipelineResult, input_shapes, on_pass: OnPass | None) -> gs.Graph:
    fn = _resolve(name)
    result = fn(out.graph, input_shapes) if name in _TAKES_SHAPES else fn(out.graph)
    if not isinstance(result, PassResult):
        raise PassError("pipeline", f"pass '{name}' returned {type(result).__name__}, not a PassResult")
    out.results.append((name, result))
    if on_pass is not None:
        on_pass(name, result)
    return result.graph


def _resolve(name: str) -> Callable[..., PassResult]:
    """The public entry of pass module ``smof_onnx.passes.<name>`` (named like its module)."""
    return getattr(importlib.import_module(f"{__package__}.{name}"), name)


def _merge(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge(out[k], v) if k in out else v
        return out
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return a + b
    if isinstance(a, bool) and isinstance(b, bool):
        return a or b
    return b


def _refusals(value: Any) -> list[tuple[str, str]]:
    """Normalise the shapes passes use for refusals: {where: reason}, [{where/node/group, reason}],
    [(where, reason)], or plain strings."""
    if not value:
        return []
    if isinstance(value, dict):
        return [(str(k), _reason(v)) for k, v in value.items()]
    out = []
    for item in value:
        if isinstance(item, dict):
            where = next((item[k] for k in ("where", "node", "group", "tensor", "name") if k in item), "?")
            out.append((_where(where), _reason(item.get("reason", item))))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            out.append((_where(item[0]), _reason(item[1])))
        else:
            out.append(("?", str(item)))
    return out


def _where(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _reason(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("reason", value))
    return str(value)

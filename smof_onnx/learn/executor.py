"""Run an ONNX graph as a ``torch.nn.Module`` so the learning stage can train its weights.

Rules:
- Constants are the graph's initializers and the outputs of its ``Constant`` nodes (Paddle
  exports keep every weight in Constant nodes). They are keyed by their ONNX tensor name.
- The float weights read by Conv, ConvTranspose, Gemm, MatMul, BatchNormalization
  (scale and bias; running statistics stay fixed) and PRelu become ``nn.Parameter``s,
  unless ``trainable`` names the parameters explicitly. Every other constant is a buffer.
  ``parameter(onnx_name)`` returns the parameter; ``state_to_onnx`` writes the current
  values back into a copy of the graph under the same names (initializer or Constant).
- Each node runs through the op table in :mod:`smof_onnx.learn.ops`. An op without an
  entry, or a configuration its ``check`` refuses, raises :class:`UnsupportedOpError`
  naming the op and the node when the module is built, never later in ``forward``.
- ``set_weight_transform(name, fn)`` replaces the constant ``w`` by ``fn(w)`` wherever
  it is read (kernel-border masks); ``set_hook(tensor, fn)`` replaces an intermediate
  tensor ``t`` by ``fn(t)`` before any consumer reads it (channel gates). Both are part
  of the autograd graph. ``set_normalizer(tensor, fn)`` is applied to a node output before
  its hook (the training-time batch normalisation of :mod:`.batchnorm`, so a channel gate
  multiplies the normalised output).
- Inputs are moved to the device of the module's parameters (``module.to(device)``).
- BatchNormalization always uses its stored statistics and Dropout is the identity,
  whatever ``train()`` / ``eval()`` says: the module computes what ONNX Runtime computes.
"""
from __future__ import annotations

import copy
import re
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import onnx
import torch
from torch import nn

from smof_onnx.passes.graph import node_attributes

from ..batching import fixed_batch
from .ops import OPS, Node, UnsupportedOpError
from .ops_tensor import constant_value

__all__ = ["OnnxModule", "UnsupportedOpError", "WEIGHT_INPUTS"]

# op_type -> indices of the inputs that are trainable weights when they are float constants.
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
    "BatchNormalization": (1, 2), "PRelu": (1,),
}

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"#{index} -> {node.output[0] if node.output else '?'}"


def opset_of(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in _DEFAULT_DOMAINS:
            return o.version
    raise UnsupportedOpError("(model)", "(model)", "the model imports no default-domain opset")


def check_supported(model: onnx.ModelProto) -> None:
    """Raise :class:`UnsupportedOpError` for the first node the executor cannot run.

    The message also lists every other unsupported op type, so one run tells the user all.
    """
    opset = opset_of(model)
    problems: list[tuple[str, str, str | None]] = []
    for i, node in enumerate(model.graph.node):
        label = _node_label(node, i)
        if node.domain not in _DEFAULT_DOMAINS:
            problems.append((node.op_type, label, f"domain '{node.domain}' is not supported "
                                                  "(only the default ONNX domain is)"))
            continue
        entry = OPS.get(node.op_type)
        if entry is None:
            problems.append((node.op_type, label, None))
            continue
        if entry.check is not None:
            reason = entry.check(Node(label, node.op_type, node_attributes(node), opset, len(node.output)))
            if reason:
                problems.append((node.op_type, label, reason))
    if problems:
        op_type, label, reason = problems[0]
        others = sorted({p[0] for p in problems[1:]} - {op_type})
        if others:
            reason = (reason or "is not supported by the torch executor") + \
                f" (also unsupported in this model: {', '.join(others)})"
        raise UnsupportedOpError(op_type, label, reason)


def _sanitize(name: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", name) or "_"
    if base[0].isdigit():
        base = "_" + base
    key, i = base, 1
    while key in taken:
        key, i = f"{base}_{i}", i + 1
    taken.add(key)
    return key


class OnnxModule(nn.Module):
    """An ONNX model as a torch module; ``forward`` returns the graph outputs as a tuple."""

    def __init__(self, model: onnx.ModelProto, trainable: Iterable[str] | None = None):
        super().__init__()
        check_supported(model)
        self._model = model
        self.opset = opset_of(model)
        graph = model.graph

        consts: dict[str, torch.Tensor] = {}
        for init in graph.initializer:
            consts[init.name] = torch.from_numpy(np.array(onnx.numpy_helper.to_array(init)))
        self._steps: list[tuple[Callable, Node, list[str], list[str]]] = []
        for i, node in enumerate(graph.node):
            attrs = node_attributes(node)
            label = _node_label(node, i)
            if node.op_type == "Constant":
                consts[node.output[0]] = constant_value(attrs)
                continue
            ctx = Node(label, node.op_type, attrs, self.opset, len(node.output))
            self._steps.append((OPS[node.op_type].fn, ctx, list(node.input), list(node.output)))

        self.input_names = [i.name for i in graph.input if i.name not in consts]
        # the batch every call must have (None: any); :mod:`smof_onnx.batching` frees it for training
        self.model_batch = fixed_batch(model)
        self.output_names = [o.name for o in graph.output]
        self._check_dataflow(consts)

        if trainable is None:
            wanted = set()
            for _, ctx, ins, _ in self._steps:
                for j in WEIGHT_INPUTS.get(ctx.op_type, ()):
                    if j < len(ins) and ins[j] in consts and consts[ins[j]].is_floating_point():
                        wanted.add(ins[j])
        else:
            wanted = set(trainable)
            unknown = sorted(w for w in wanted if w not in consts or not consts[w].is_floating_point())
            if unknown:
                raise KeyError(f"trainable names that are not float constants of the graph: {unknown}")

        taken: set[str] = set()
        self._key: dict[str, str] = {}
        self.params = nn.ParameterDict()
        self.consts = nn.Module()
        for name, value in consts.items():
            key = _sanitize(name, taken)
            self._key[name] = key
            if name in wanted:
                self.params[key] = nn.Parameter(value)
            else:
                self.consts.register_buffer(key, value)
        self._param_names = [n for n in consts if n in wanted]
        self._hooks: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._norms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._taps: frozenset[str] = frozenset()
        self.tapped: dict[str, torch.Tensor] = {}
        self._node_outputs = frozenset(o for _, _, _, outs in self._steps for o in outs if o)
        self._frees = self._last_uses()

    # ------------------------------------------------------------ construction helpers

    def _check_dataflow(self, consts: Mapping[str, torch.Tensor]) -> None:
        known = set(consts) | set(self.input_names)
        for _, ctx, ins, outs in self._steps:
            for name in ins:
                if name and name not in known:
                    raise UnsupportedOpError(ctx.op_type, ctx.name, f"input '{name}' is produced by no earlier "
                                             "node (the graph is not topologically sorted or is incomplete)")
            known.update(o for o in outs if o)
        missing = [o for o in self.output_names if o not in known]
        if missing:
            raise UnsupportedOpError("(graph)", "(outputs)", f"graph outputs {missing} are produced by no node")

    def _last_uses(self) -> list[list[str]]:
        """Per step, the intermediate tensors nobody reads afterwards (freed to save memory)."""
        keep = set(self.output_names)
        last: dict[str, int] = {}
        for i, (_, _, ins, outs) in enumerate(self._steps):
            for name in list(ins) + list(outs):
                if name:
                    last[name] = i
        frees: list[list[str]] = [[] for _ in self._steps]
        for name, i in last.items():
            if name not in keep and name not in self._key:
                frees[i].append(name)
        return frees

    # ------------------------------------------------------------ public API

    @property
    def parameter_names(self) -> list[str]:
        """ONNX names of the constants that are trainable parameters, in graph order."""
        return list(self._param_names)

    def parameter(self, name: str) -> nn.Parameter:
        if name not in self._key or self._key[name] not in self.params:
            raise KeyError(f"'{name}' is not a parameter of this module (parameters are the weights "
                           f"of {', '.join(WEIGHT_INPUTS)} or the names given as trainable)")
        return self.params[self._key[name]]

    def named_onnx_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name in self._param_names:
            yield name, self.params[self._key[name]]

    def constant(self, name: str) -> torch.Tensor:
        """The stored value of any constant (parameter or buffer), untransformed."""
        if name not in self._key:
            raise KeyError(f"'{name}' is not a constant (initializer or Constant output) of the graph")
        key = self._key[name]
        return self.params[key] if key in self.params else getattr(self.consts, key)

    def set_hook(self, tensor_name: str, fn: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """Replace the intermediate tensor ``t`` by ``fn(t)`` (``None`` removes the hook)."""
        if tensor_name not in self._node_outputs and tensor_name not in self.input_names:
            raise KeyError(f"'{tensor_name}' is not a graph input or a node output")
        self._set(self._hooks, tensor_name, fn)

    def set_normalizer(self, tensor_name: str, fn: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """Replace the node output ``t`` by ``fn(t)`` before its hook (``None`` removes it)."""
        if tensor_name not in self._node_outputs:
            raise KeyError(f"'{tensor_name}' is not a node output")
        self._set(self._norms, tensor_name, fn)

    def set_weight_transform(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """Every read of constant ``name`` sees ``fn(value)`` (``None`` removes the transform)."""
        if name not in self._key:
            raise KeyError(f"'{name}' is not a constant (initializer or Constant output) of the graph")
        self._set(self._transforms, name, fn)

    def set_taps(self, names: Iterable[str]) -> None:
        """Keep the value of each named node output (after its normaliser and hook) in
        :attr:`tapped` at every forward, so a loss can read intermediate tensors the graph
        frees. An empty ``names`` stops tapping."""
        names = frozenset(names)
        unknown = sorted(names - self._node_outputs)
        if unknown:
            raise KeyError(f"taps that are not node outputs: {unknown}")
        self._taps = names
        self.tapped = {}

    @property
    def taps(self) -> frozenset[str]:
        return self._taps

    @property
    def node_outputs(self) -> frozenset[str]:
        """Every tensor a node of the graph makes (what :meth:`set_taps` may name)."""
        return self._node_outputs

    def clear_hooks(self) -> None:
        self._hooks.clear()
        self._norms.clear()
        self._transforms.clear()

    @staticmethod
    def _set(table: dict, name: str, fn) -> None:
        if fn is None:
            table.pop(name, None)
        else:
            table[name] = fn

    def forward(self, *inputs: Any, **named: Any) -> tuple[torch.Tensor, ...]:
        env = self._bind(inputs, named)
        for name, key in self._key.items():
            value = self.params[key] if key in self.params else getattr(self.consts, key)
            fn = self._transforms.get(name)
            env[name] = fn(value) if fn is not None else value
        for name in self.input_names:
            if name in self._hooks:
                env[name] = self._hooks[name](env[name])
        tapped: dict[str, torch.Tensor] = {}
        for (fn, ctx, ins, outs), frees in zip(self._steps, self._frees):
            result = fn(ctx, *[env[i] if i else None for i in ins])
            if not isinstance(result, tuple):
                result = (result,)
            for name, value in zip(outs, result):
                if name:
                    norm = self._norms.get(name)
                    if norm is not None:
                        value = norm(value)
                    hook = self._hooks.get(name)
                    env[name] = hook(value) if hook is not None else value
                    if name in self._taps:
                        tapped[name] = env[name]
            for name in frees:
                env.pop(name, None)
        self.tapped = tapped
        return tuple(env[o] for o in self.output_names)

    def _bind(self, inputs, named) -> dict[str, torch.Tensor]:
        if len(inputs) > len(self.input_names):
            raise TypeError(f"the model takes {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        env = dict(zip(self.input_names, inputs))
        for k, v in named.items():
            if k not in self.input_names:
                raise TypeError(f"'{k}' is not an input of the model; inputs are {self.input_names}")
            if k in env:
                raise TypeError(f"input '{k}' given twice")
            env[k] = v
        missing = [n for n in self.input_names if n not in env]
        if missing:
            raise TypeError(f"missing model inputs {missing}")
        device = next(iter(self.parameters()), None)
        device = device.device if device is not None else None
        for k, v in env.items():
            if not isinstance(v, torch.Tensor):
                env[k] = torch.as_tensor(np.asarray(v), device=device)
            elif device is not None and v.device != device:  # feeds follow the module (--device)
                env[k] = v.to(device, non_blocking=True)
        return env

    def state_to_onnx(self, model: onnx.ModelProto | None = None, *, transformed: bool = False) -> onnx.ModelProto:
        """A copy of ``model`` (default: the model this module was built from) holding the
        current parameter values under the same names.

        With ``transformed=True`` the weight transforms are applied first, so the file
        computes what ``forward`` computes without tensor hooks (e.g. masked kernels).
        """
        model = copy.deepcopy(model if model is not None else self._model)
        values: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for name, p in self.named_onnx_parameters():
                v = p
                if transformed and name in self._transforms:
                    v = self._transforms[name](p)
                values[name] = v.detach().cpu().numpy()
        written: set[str] = set()
        for init in model.graph.initializer:
            if init.name in values:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
                init.CopyFrom(onnx.numpy_helper.from_array(values[init.name].astype(dtype), init.name))
                written.add(init.name)
        for node in model.graph.node:
            if node.op_type == "Constant" and node.output[0] in values:
                for a in node.attribute:
                    if a.name == "value":
                        dtype = onnx.helper.tensor_dtype_to_np_dtype(a.t.data_type)
                        a.t.CopyFrom(onnx.numpy_helper.from_array(values[node.output[0]].astype(dtype),
                                                                  a.t.name or node.output[0]))
                        written.add(node.output[0])
        missing = sorted(set(values) - written)
        if missing:
            raise KeyError(f"parameters {missing} have no initializer or Constant 'value' of that name "
                           "in the target model")
        return model

"""An independent oracle for the exact cut: what the best possible cut of a zeroed model keeps.

It shares no code with ``smof_onnx.passes.analysis`` or the cut passes: it reads the ONNX proto with
onnx + numpy, measures facts empirically (ONNX Runtime for values, the torch executor for
gradients) and couples channels with its own small op table (the coupling structure, atoms
and slots are in tests/oracle_structure.py; this module re-exports :class:`Structure`).

Facts (per zeroed model): ``zero`` -- the atom is exactly 0 on every draw; ``unused`` -- the
gradient of ``sum(outputs * random cotangent)`` wrt the atom is exactly 0 on every draw.
Both are measured on a *generic* copy of the model where sign-dependent activations are
replaced by sign-agnostic ones with the same zero behaviour at 0 (Relu, Clip(lo<=0<=hi),
HardSwish -> Softsign, which is 0 only at 0, bounded, and has a gradient that never
underflows; HardSigmoid -> Sigmoid, never 0). Without it a Relu that happens to be off on
every random input would make a channel look dead that no weight-based rule can prove dead
(a slot the cut rightly keeps), and zero gradients in its off region would make channels
look unused; with it, "zero" means "zero because of zero weights", which is what "best
possible" means for an exact cut. (Identity instead of Softsign would blow up: Paddle's
hard-swish x * clip(x + 3, 0, 6) / 6 becomes quadratic per layer.) Gradients run in float64
so that saturating ops do not underflow to spurious zero gradients; any non-finite value or
gradient is an error, never a silent "used".

``const`` -- the atom's values (per position) are the same on every draw and every sample: it
does not depend on the input (a bias-only channel, padded at the borders after a Pad). A cut
may fold such a channel into its readers' biases where that is exact, or keep it, so a constant
nonzero used atom is neither live nor removable, it makes its slot UNKNOWN.

Verdict per slot: KEEP if an atom is live (nonzero, used, not constant) or touches a graph
input/output; else UNKNOWN if an atom is unknown or constant; else REMOVABLE. Slots are taken after every Add (or Sub
subtrahend) operand that is entirely zero is dropped, as the cut does (``x + 0 -> x``): that
uncouples the zero branch from the sum, so its producer can shrink though the sum stays.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import onnx

from tests.oracle_structure import Structure, _attrs, all_values, initializers, slot_atoms

__all__ = ["KEEP", "UNKNOWN", "REMOVABLE", "Structure", "Facts", "Verdicts", "measure", "verdicts", "generic_copy",
           "border", "expected_kernel", "all_values", "initializers", "slot_atoms"]

KEEP, UNKNOWN, REMOVABLE = "keep", "unknown", "removable"


def generic_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Sign-agnostic activations with the same zero behaviour at 0 (see the module doc)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = initializers(m)
    for node in m.graph.node:
        if node.op_type in ("Relu", "HardSwish"):
            node.op_type = "Softsign"
            del node.attribute[:]
        elif node.op_type == "Clip":
            a = _attrs(node)
            lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
            if len(node.input) > 1 and node.input[1]:
                lo = float(inits[node.input[1]]) if node.input[1] in inits else None
            if len(node.input) > 2 and node.input[2]:
                hi = float(inits[node.input[2]]) if node.input[2] in inits else None
            if lo is not None and hi is not None and lo <= 0 <= hi:
                node.op_type = "Softsign"
                del node.attribute[:]
                del node.input[1:]
        elif node.op_type == "HardSigmoid":
            node.op_type = "Sigmoid"
            del node.attribute[:]
    return m


@dataclasses.dataclass
class Facts:
    zero: np.ndarray
    unused: np.ndarray
    no_grad: np.ndarray  # atoms whose tensor carries no gradient at all (treated as unknown)
    const: np.ndarray | None = None  # atoms with one value everywhere, on every draw


def measure(structure: Structure, model: onnx.ModelProto, feeds_list: Sequence[Mapping[str, np.ndarray]]) -> Facts:
    """Zero (ONNX Runtime) and unused (torch gradients) per atom of ``model`` (same graph as
    ``structure``'s, other weights) on a generic copy of it."""
    gen = generic_copy(model)
    n = structure.n
    zero = np.ones(n, bool)
    const = np.ones(n, bool)
    first: dict[str, np.ndarray] = {}  # per tensor: the first sample of the first draw
    for values, feeds in zip(all_values(gen, feeds_list), feeds_list):
        values = {**values, **feeds}
        for name, sp in structure.spaces.items():
            v = values[name]
            assert np.isfinite(v).all(), f"oracle: non-finite values in {name} of the generic model"
            nz = np.moveaxis(v, 1, 0).reshape(sp.size, -1)
            zero[sp.base:sp.base + sp.size] &= ~(nz != 0).any(axis=1)
            per = np.moveaxis(v, 1, 0).reshape(sp.size, v.shape[0], -1)
            ref = first.setdefault(name, per[:, :1].copy())
            const[sp.base:sp.base + sp.size] &= (per == ref).all(axis=(1, 2))
    unused, no_grad = _gradients(structure, gen, feeds_list)
    return Facts(zero, unused, no_grad, const)


def _gradients(structure: Structure, model: onnx.ModelProto, feeds_list) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from smof_onnx.learn.executor import OnnxModule

    mod = OnnxModule(model).double()
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(t):
            captured[name] = t
            return t
        return hook

    inputs = set(mod.input_names)
    for name in structure.spaces:
        if name not in inputs:
            mod.set_hook(name, hook_for(name))
    n = structure.n
    unused = np.ones(n, bool)
    no_grad = np.zeros(n, bool)
    gen = torch.Generator().manual_seed(1234)
    for feeds in feeds_list:
        captured.clear()
        args = {k: torch.from_numpy(np.asarray(v, np.float64)).requires_grad_(True) for k, v in feeds.items()}
        for k in inputs:
            captured[k] = args[k]
        outs = mod(**args)
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
                   for o in outs if o.is_floating_point())
        names = [k for k, t in captured.items() if t.requires_grad]
        for k in set(captured) - set(names):
            sp = structure.spaces[k]
            no_grad[sp.base:sp.base + sp.size] = True
        grads = torch.autograd.grad(loss, [captured[k] for k in names], allow_unused=True)
        for k, g in zip(names, grads):
            sp = structure.spaces[k]
            if g is None:
                continue
            g = g.detach().numpy()
            assert np.isfinite(g).all(), f"oracle: non-finite gradient at {k} of the generic model"
            nz = (np.moveaxis(g, 1, 0).reshape(sp.size, -1) != 0).any(axis=1)
            unused[sp.base:sp.base + sp.size] &= ~nz
    return unused, no_grad


@dataclasses.dataclass
class Verdicts:
    """Per atom: the verdict of its slot (slots taken after zero branches are dropped)."""

    structure: Structure
    facts: Facts
    root: np.ndarray     # slot label per atom
    verdict: np.ndarray  # per atom: KEEP / UNKNOWN / REMOVABLE
    live: np.ndarray     # per atom: nonzero and used

    def removable_atoms(self, frozen_nodes: set[str] = frozenset()) -> np.ndarray:
        """REMOVABLE atoms whose slot touches none of ``frozen_nodes`` (nodes the cut froze)."""
        s = self.structure
        out = self.verdict == REMOVABLE
        if frozen_nodes:
            for _, atoms in slot_atoms(self.root).items():
                if out[atoms[0]] and s.slot_nodes(atoms) & frozen_nodes:
                    out[atoms] = False
        return out

    def count_ranges(self, removable: np.ndarray) -> dict[str, tuple[int, int]]:
        """Per tensor, (fewest, most) channels the best cut may leave.

        Fewest: the KEEP slots. Most: everything not removable, plus one slot for every tensor
        sharing a slot with this one whose every slot is removable (the cut never empties a
        tensor; it keeps one slot of it). A kept slot counts with all its atoms in this tensor:
        one channel before a Flatten is a block of features after it."""
        s, root = self.structure, self.root
        full = [set(root[s.atoms_of(t)].tolist()) for t in s.spaces if removable[s.atoms_of(t)].all()]
        out = {}
        for t in s.spaces:
            atoms = s.atoms_of(t)
            lo = int((self.verdict[atoms] == KEEP).sum())
            hi = int((~removable[atoms]).sum())
            labels, counts = np.unique(root[atoms[removable[atoms]]], return_counts=True)
            roots = set(labels.tolist())
            touching = [f & roots for f in full if f & roots]
            if touching:
                size = dict(zip(labels.tolist(), counts.tolist()))
                kept = sorted((size[r] for r in set().union(*touching)), reverse=True)[:len(touching)]
                hi = min(hi + sum(kept), len(atoms))
            out[t] = (lo, hi)
        return out


def verdicts(structure: Structure, facts: Facts) -> Verdicts:
    s = structure
    live = ~(facts.zero | facts.unused)
    unknown = np.zeros(s.n, bool)
    unknown[list(s.unknown_atoms)] = True
    unknown |= facts.no_grad
    if facts.const is not None:  # input-independent: the cut may fold it away or keep it
        unknown |= live & facts.const
        live = live & ~facts.const
    keep = live.copy()
    keep[list(s.keep_atoms)] = True
    root = s.roots_after_drops(facts.zero)
    verdict = np.full(s.n, REMOVABLE, object)
    for _, atoms in slot_atoms(root).items():
        if keep[atoms].any():
            verdict[atoms] = KEEP
        elif unknown[atoms].any():
            verdict[atoms] = UNKNOWN
    return Verdicts(s, facts, root, verdict, live)

# ------------------------------------------------------------------ kernels

def border(w: np.ndarray, spatial_from: int = 2) -> list[tuple[int, int]] | None:
    """(r_lo, r_hi) per spatial axis: leading / trailing slices zero across all other axes;
    None when ``w`` is entirely zero (or empty)."""
    if w.size == 0 or not w.any():
        return None
    out = []
    for ax in range(spatial_from, w.ndim):
        prof = np.abs(np.moveaxis(w, ax, 0)).reshape(w.shape[ax], -1).max(axis=1) != 0
        nz = np.flatnonzero(prof)
        out.append((int(nz[0]), int(w.shape[ax] - 1 - nz[-1])))
    return out


def expected_kernel(node: onnx.NodeProto, w: np.ndarray, keep_in: np.ndarray | None,
                    keep_out: np.ndarray | None) -> list[int] | None:
    """Kernel of ``node`` after the best cut when the channels in ``keep_*`` remain (None: all).

    Conv: k - r_lo - r_hi. ConvTranspose: the pads bound the cut (a negative output-side pad
    cannot be expressed), so at most pad // dilation taps go on each side."""
    a = _attrs(node)
    group = a.get("group", 1)
    if node.op_type == "Conv":
        if keep_out is not None:
            w = w[keep_out]
        if keep_in is not None and group == 1:
            w = w[:, keep_in]
    else:
        if keep_in is not None:
            w = w[keep_in]
        if keep_out is not None and group == 1:
            w = w[:, keep_out]
    b = border(w)
    if b is None:
        return None
    k = list(w.shape[2:])
    if node.op_type == "ConvTranspose":
        n = len(k)
        pads = a.get("pads", [0] * 2 * n)
        dil = a.get("dilations", [1] * n)
        b = [(min(lo, pads[i] // dil[i]), min(hi, pads[n + i] // dil[i])) for i, (lo, hi) in enumerate(b)]
    return [ki - lo - hi for ki, (lo, hi) in zip(k, b)]

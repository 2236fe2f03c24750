"""Many edits as per-parameter low-rank deltas, so each row of one batched forward (a lane) can carry its own edit.

A lane is (edit e, episode j). Every edit is low rank: `surgery.core.patching.updates` gives the
updates `target += left @ right` that realise it, where `target` is a view of one parameter
P [d_in, d_out] (`y = x @ P`). Each update is mapped onto a block of P from the view's storage
offset and strides (never from shapes):

    plain view        P[rows, cols] += left @ right
    transposed view   P[rows, cols] += right.T @ left.T     (QK's key side: W_K.T)

and padded to P's full size: L_e [d_in, r] (zero outside `rows`) and R_e [r, d_out] (zero outside
`cols`), the updates of one edit on one parameter concatenated along r, and r padded with zero
columns to the largest r among the edits of that parameter. A row carrying edit e then computes

    y = x @ P + bias + (x @ L_e) @ R_e

which is `x @ (P + L_e R_e) + bias`, the patched model's output, up to float rounding: a patch
rounds `P + L_e R_e` to P's dtype once, a lane rounds the two small products and the sum instead.
The padding adds exact zeros. tests/test_lanes.py measures the difference against `surgery.patch`
(float32: within 1e-5 absolute on the outputs; bfloat16: within the bfloat16 rounding of P itself).

The deltas are computed from the weights as they are when the `LaneEdits` is built; a forward
refuses them once any weight they were computed from has changed (`check_current`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from adapters import wrap
from surgery.core.decomposition import base_of, canonical_version, factors
from surgery.core.patching import Edit, Patch, updates
from surgery.errors import SurgeryError

__all__ = ["Delta", "LaneEdits", "Stacked"]


@dataclass(frozen=True)
class Delta:
    """`P[rows, cols] += left @ right` for the parameter P named `param`."""

    param: str
    rows: slice
    cols: slice
    left: torch.Tensor  # [rows, r]
    right: torch.Tensor  # [r, cols]


@dataclass(frozen=True)
class Stacked:
    """Every edit's padded delta to one parameter, stacked for a batched forward."""

    slot: torch.Tensor
    """[n_edits + 1] long: edit e's index into left/right, -1 where e leaves the parameter alone; the
    last entry, -1, is what lane index -1 (unedited) reads."""
    left: torch.Tensor  # [E, d_in, r]
    right: torch.Tensor  # [E, r, d_out]


class LaneEdits:
    """n edits (each a list of `Edit`s applied together, as one `Patch` applies them) as per-parameter deltas.

        lane_edits = LaneEdits(adapter, [[Edit(1, "K", 0)], [Edit(0, "OV", 3, head=0)], ...])
        lane_edits.deltas[i]                    # edit i's Delta per (parameter, update)
        lane_edits.stacked(name, dtype, device) # what DTPolicy gathers from

    A bare `Edit` or dict in the list counts as a one-edit list. Each group is validated exactly as
    `Patch` validates it (`validate_edit`, no triple edited twice) before anything is computed.
    """

    def __init__(self, model, edits: Sequence):
        adapter = wrap(model)
        if isinstance(edits, (Edit, dict)) or not isinstance(edits, Sequence):
            raise SurgeryError("edits must be a list with one entry per edit (an Edit, a dict, or a list of them "
                               f"applied together), got {type(edits).__name__}")
        groups = [[g] if isinstance(g, (Edit, dict)) else list(g) for g in edits]
        self.adapter, self.model = adapter, adapter.model
        self.edits: tuple[tuple[Edit, ...], ...] = tuple(Patch(adapter, g).edits for g in groups)
        """The edits, defaults filled in, as `Patch` applies them."""
        self.params = {id(p): (name, p) for name, p in self.model.named_parameters()}
        self.deltas: tuple[tuple[Delta, ...], ...] = tuple(
            tuple(self._delta(*u) for e in group for u in updates(adapter, e)) for group in self.edits)
        # What the deltas were computed from: every factor of every edited weight, by version.
        self._sources = {id(base_of(f)): (base_of(f), canonical_version(adapter, f))
                         for group in self.edits for e in group for f in factors(adapter, e.block, e.weight)}
        self._stacks: dict[tuple, Stacked] = {}

    def __len__(self) -> int:
        return len(self.edits)

    def __repr__(self) -> str:
        return f"LaneEdits({len(self)} edits on {len(self.touched())} parameters of {type(self.model).__name__})"

    def touched(self) -> dict[str, torch.nn.Parameter]:
        """The parameters some edit changes, by name."""
        by_name = {name: p for name, p in self.params.values()}
        return {d.param: by_name[d.param] for group in self.deltas for d in group}

    def check_current(self) -> None:
        """Raise unless every weight the deltas came from is as it was (a reverted patch counts as unchanged)."""
        for base, version in self._sources.values():
            if canonical_version(self.adapter, base) != version:
                name = self.params.get(id(base), ("a weight",))[0]
                raise SurgeryError(f"{name} changed after these lane edits were computed (a patch applied since?); "
                                   "build the LaneEdits again from the weights the lanes should edit")

    def stacked(self, param: str, dtype: torch.dtype, device: torch.device | str = "cpu") -> Stacked:
        """The padded deltas of every edit to parameter `param`, in `dtype` on `device` (cached)."""
        key = (param, dtype, str(device))
        hit = self._stacks.get(key)
        if hit is not None:
            return hit
        P = self.touched().get(param)
        if P is None:
            raise SurgeryError(f"no edit changes {param}; changed: {', '.join(self.touched()) or 'none'}")
        d_in, d_out = P.shape
        slot = torch.full((len(self) + 1,), -1, dtype=torch.long)
        lefts, rights = [], []
        for e, group in enumerate(self.deltas):
            mine = [d for d in group if d.param == param]
            if not mine:
                continue
            L = torch.zeros(d_in, sum(d.left.shape[1] for d in mine), dtype=torch.float64)
            R = torch.zeros(L.shape[1], d_out, dtype=torch.float64)
            k = 0
            for d in mine:  # several updates of one edit on one parameter: side by side along r
                r = d.left.shape[1]
                L[d.rows, k:k + r] = d.left.double().cpu()
                R[k:k + r, d.cols] = d.right.double().cpu()
                k += r
            slot[e] = len(lefts)
            lefts.append(L), rights.append(R)
        r = max(L.shape[1] for L in lefts)
        left = torch.stack([torch.nn.functional.pad(L, (0, r - L.shape[1])) for L in lefts])  # [E, d_in, r]
        right = torch.stack([torch.nn.functional.pad(R, (0, 0, 0, r - R.shape[0])) for R in rights])  # [E, r, d_out]
        out = Stacked(slot.to(device), left.to(device, dtype), right.to(device, dtype))
        self._stacks[key] = out
        return out

    def _delta(self, target: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> Delta:
        """The block of its parameter that an update of the view `target` changes."""
        base = base_of(target)
        found = self.params.get(id(base))
        if found is None:
            raise SurgeryError(f"an edit's target (shape {tuple(target.shape)}) is not a view of one of the model's "
                               "parameters; lanes cannot apply it")
        name, P = found
        if P.dim() != 2 or not P.is_contiguous() or target.dim() != 2:
            raise SurgeryError(f"cannot map an edit of {name} onto lanes: they need a contiguous 2-D parameter and a "
                               f"2-D view of it (parameter shape {tuple(P.shape)}, strides {P.stride()}; view shape "
                               f"{tuple(target.shape)})")
        if target.untyped_storage().data_ptr() != P.untyped_storage().data_ptr():
            raise SurgeryError(f"an edit's target does not share {name}'s storage; lanes cannot apply it")
        n_rows, n_cols = P.shape
        r0, c0 = divmod(target.storage_offset() - P.storage_offset(), n_cols)
        (m, n), (s0, s1) = target.shape, target.stride()

        def step(stride: int, want: int, size: int) -> bool:  # a size-1 dimension's stride means nothing
            return size == 1 or stride == want

        if step(s0, n_cols, m) and step(s1, 1, n):  # target[i, j] = P[r0 + i, c0 + j]
            rows, cols, transposed = slice(r0, r0 + m), slice(c0, c0 + n), False
        elif step(s0, 1, m) and step(s1, n_cols, n):  # target[i, j] = P[r0 + j, c0 + i]: a transposed block
            rows, cols, transposed = slice(r0, r0 + n), slice(c0, c0 + m), True
        else:
            raise SurgeryError(f"cannot map an edit's view of {name} (shape {tuple(target.shape)}, strides "
                               f"{target.stride()}) onto a block of it (strides {P.stride()}); lanes cannot apply it")
        if r0 < 0 or rows.stop > n_rows or cols.stop > n_cols:
            raise SurgeryError(f"an edit's view of {name} does not lie inside it; lanes cannot apply it")
        block = P[rows, cols].mT if transposed else P[rows, cols]
        if block.data_ptr() != target.data_ptr() or block.shape != target.shape:  # the mapping is the view itself
            raise SurgeryError(f"cannot map an edit's view of {name} onto a block of it; lanes cannot apply it")
        if transposed:  # (left @ right).T = right.T @ left.T
            left, right = right.mT, left.mT
        return Delta(name, rows, cols, left.detach(), right.detach())


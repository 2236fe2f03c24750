"""Reversible singular-vector edits: `with patch(model, block=1, weight="K", idx=0): ...`.

Each edit changes one weight by a low-rank update computed from its SVD (see `surgery.decompose`).
For K and V the update is added to the weight; for OV (`W_V @ W_O`) and QK (`W_Q @ W_K.T`) it is
added to one factor so the product changes by exactly the intended amount:

    write side ("out"), replacing columns V_J by V_J + C:   B += (B @ V_J) @ C.T
    read side ("in"),   replacing columns U_J by U_J + C:   A += C @ (U_J.T @ A)

(for K and V, A = B = W, and `W @ V_J = U_J diag(S_J)`). Removing or scaling triples is the
same formula with C = k * (their vectors). Restoring never subtracts the update: the exact slice
touched is copied aside before the edit and copied back afterwards, so the state_dict is bitwise
what it was and the Parameter objects are the same.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

from adapters import Adapter, wrap
from surgery.core import interrupts
from surgery.core.decomposition import (
    DEFAULT_SIDE,
    as_int,
    base_of,
    canonical_version,
    check_location,
    check_side,
    decompose,
    factors,
)
from surgery.core.interrupts import critical, interruptible
from surgery.core.state import state
from surgery.errors import SurgeryError
from surgery.names import OPS


@dataclass(frozen=True)
class Edit:
    """One edit of one weight's singular triples: the spec `patch` and `Patch` apply.

    block: transformer block, 0..n_blocks-1.
    weight: "K" (MLP in, `[d_model, d_mlp]`), "V" (MLP out, `[d_mlp, d_model]`), or per head
        "OV" (`W_V @ W_O`) and "QK" (`W_Q @ W_K.T`), each `[d_model, d_model]` of rank d_head.
    idx: the singular triple, 0 = largest singular value (ignored by op="keep_top").
    head: the attention head, 0..n_heads-1; required for OV and QK, refused for K and V.
    op: what happens to triple `idx`:
        "constant" (the study's edit) the vector on `side` becomes `value * ones` (not unit norm);
        "zero" the triple is removed; "scale" its singular value is multiplied by `value`;
        "replace" the vector on `side` becomes `value` (a vector of that side's length);
        "keep_top" only triples 0..value-1 are kept.
    value: the op's number or vector: constant's scalar (default 1/d_model, the study's 1/128),
        scale's factor, replace's vector, keep_top's k; none for zero.
    side: "in" (read side, the columns of U) or "out" (write side, the columns of V); default the
        residual-facing side: K in, V out, OV out, QK in.

    Example (an edit as data: several at once, stored, or validated before a long run):

    >>> edits = [Edit(block=1, weight="K", idx=0), Edit(block=0, weight="OV", head=0, idx=2, op="zero")]
    >>> with patch(model, edits):
    ...     pass
    >>> validate_edit(model, Edit(block=1, weight="K")).value   # defaults filled in: 1/d_model
    0.0078125
    """

    block: int
    weight: str
    idx: int = 0
    head: int | None = None
    op: str = "constant"
    value: object = None
    side: str | None = None
    """"in" (read side, U) or "out" (write side, V); default: the residual-facing side (K: in, V: out, OV: out, QK: in)."""

    def to_dict(self) -> dict:
        """The fields as JSON-able values (a `replace` vector as a list): for fingerprints and reports."""
        d = asdict(self)
        if hasattr(d["value"], "tolist"):
            d["value"] = d["value"].tolist()
        return d


def patch(model, block=None, weight=None, idx: int = 0, head: int | None = None, op: str = "constant",
          value=None, side: str | None = None) -> "Patch":
    """A reversible edit of singular triples, as a context manager: the weights are edited on entry
    and restored bitwise on exit, whatever ends the block (an exception, Ctrl-C at any instant).

    model: a loaded model (`surgery.load(...)`) or a raw Hugging Face / TransformerLens model.
    block, weight, idx, head, op, value, side: one edit, as the fields of `Edit` (see
        `help(surgery.Edit)`): block number; "K", "V", "OV" or "QK"; the triple (0 = largest);
        the head (OV and QK); "constant" (default, the study's edit), "zero", "scale", "replace"
        or "keep_top"; the op's value; "in" or "out" (default: the residual-facing side).
        `block` may instead be a list of `Edit`s or dicts with those fields: applied together,
        each computed from the unedited weights.

    Everything is checked before any weight changes (a SurgeryError names what is valid). Patches
    nest last-in-first-out; the edit is a rank-1 update of one weight (a factor of OV/QK), and the
    restore copies the saved slice back (docs/core.md). Returns a `Patch` (also usable as
    `p.apply()` ... `p.revert()`).

    Examples:

    >>> W = model.model.encoder.h[1].mlp.c_fc.weight
    >>> before = W.detach().clone()
    >>> with patch(model, block=1, weight="K", idx=0):      # the study's edit: u_0 := (1/128) * ones
    ...     torch.equal(W, before)
    False
    >>> torch.equal(W, before)                               # restored bitwise
    True
    >>> with patch(model, block=0, weight="OV", head=0, idx=3, op="scale", value=0.5):
    ...     pass
    >>> with patch(model, [dict(block=1, weight="K", idx=0, op="zero"), dict(block=2, weight="V", idx=1)]):
    ...     pass
    """
    if isinstance(block, (list, tuple)):
        if weight is not None:
            raise SurgeryError("give either a list of edits or one edit's block/weight/..., not both")
        return Patch(model, block)
    return Patch(model, [Edit(block, weight, idx, head, op, value, side)])


class Patch:
    """Edits applied together: `with Patch(...)`, or `p.apply()` ... `p.revert()` in a notebook.

    model: a loaded model or a raw Hugging Face / TransformerLens model.
    edits: `Edit`s, or dicts with Edit's fields (block, weight, idx, head, op, value, side); each
        is checked (SurgeryError naming what is valid) before anything changes, and two edits of
        the same triple are refused. Every update is computed from the weights as they are at
        `apply`, not from each other's results.

    Nested patches must exit last-in-first-out. Exiting one out of order reverts every patch
    applied after it too (so the weights are still restored exactly), then raises RuntimeError.
    One thread at a time may hold patches on a model: another thread's apply waits.
    A Ctrl-C at any instant of a `with` block leaves the weights bitwise restored (docs/core.md).
    `p.active` says whether it is applied; a reverted patch can be applied again.

    Example (a notebook, where one `with` cannot span cells):

    >>> p = Patch(model, [Edit(block=1, weight="K", idx=0)]).apply()
    >>> p.active
    True
    >>> p.revert()
    >>> p.active
    False
    """

    def __init__(self, model, edits):
        self.adapter: Adapter = wrap(model)
        self.edits = tuple(validate_edit(self.adapter, as_edit(e)) for e in edits)
        if not self.edits:
            raise SurgeryError("no edits given")
        _check_disjoint(self.adapter, self.edits)
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._versions: dict[int, tuple[torch.Tensor, int, int]] = {}
        self._svds: dict = {}
        self._token = None  # what interrupts.uninstall needs when this patch is reverted
        self.active = False

    def __repr__(self) -> str:
        state = "applied" if self.active else "not applied"
        return f"Patch({', '.join(map(repr, self.edits))}; {state})"

    # apply and revert are `critical` (surgery/core/interrupts.py): a Ctrl-C landing anywhere in
    # them, their first instruction included, is held until the line `released = True` and raised
    # by `interrupts.settle()` right after it. They are `__enter__` and `__exit__` themselves, so no
    # instruction of a wrapper lies between the `with` statement and them.

    @critical
    def apply(self) -> "Patch":
        """Apply every edit (computed from the weights as they are now); returns self.

        All or nothing: on any exception, a Ctrl-C during it included, the weights are restored
        and the lock released before it propagates.
        """
        if self.active:
            released = True  # noqa: F841  (the SIGINT handler reads it in this frame: see core/interrupts.py)
            interrupts.settle()
            raise RuntimeError("this patch is already applied; revert it first")
        token = interrupts.install()
        lock = state(self.adapter).lock
        locked, saved, befores = False, [], {}
        try:
            interrupts.acquire(lock)
            locked = True
            pending, befores, svds = _prepare(self.adapter, self.plan())
            with torch.no_grad():
                for target, left, right in pending:
                    saved.append((target, _save(self.adapter, target)))
                    _add_product(target, left, right)
            self._saved, self._svds, self._token = saved, svds, token
            self._versions = {k: (b, v, b._version) for k, (b, v) in befores.items()}
            state(self.adapter).patch_stack.append(self)
            self.active = True
            released = True  # a Ctrl-C from here on is raised where it lands, and rolled back below
            interrupts.settle()  # as is one held until now
            return self
        except BaseException:
            released = False  # held again while rolling back (nothing above is a check point)
            if self.active:
                state(self.adapter).patch_stack.remove(self)
                self.active = False
            with torch.no_grad():
                _restore_saved(self.adapter, saved)
            for base, before in befores.values():  # bitwise as before: their cached SVDs stay valid
                state(self.adapter).version_aliases[(id(base), base._version)] = before
            self._saved, self._versions, self._svds, self._token = [], {}, {}, None
            if locked:
                lock.release()
            interrupts.uninstall(token)
            released = True  # noqa: F841  (the SIGINT handler reads it in this frame: see core/interrupts.py)
            interrupts.settle()
            raise

    @critical
    def revert(self, *exc_info) -> None:
        """Restore the weights bitwise; reverting a patch that is not applied does nothing.

        `exc_info` is ignored: it is there because `revert` is also `__exit__`.
        """
        token = interrupts.install()  # (the `with` body may have replaced the handler)
        unwound = []
        try:
            if not self.active:
                return
            stack = state(self.adapter).patch_stack
            out_of_order = stack[-1] is not self
            while True:  # unwind everything applied after this patch, then this patch
                top = stack.pop()
                unwound.append(top)
                top._restore()
                if top is self:
                    break
            if out_of_order:
                raise RuntimeError("patches exited out of order (they must nest last-in-first-out); the "
                                   "weights were restored by also reverting the patches applied after this one")
        finally:
            tokens = [token] + [p._token for p in unwound]  # the innermost install first
            for p in unwound:
                p._token = None
            for t in tokens:
                interrupts.uninstall(t)
            released = True  # noqa: F841  (the SIGINT handler reads it in this frame: see core/interrupts.py)
            interrupts.settle()

    __enter__ = apply
    __exit__ = revert

    def save(self, directory, *, overwrite: bool = False):
        """Write this patch (not applied) to a folder that `surgery.load_patch` reads back (surgery.core.saved)."""
        # The one import of saved from here, at call time: saved builds on Patch (SavedPatch), and the
        # file format is its business; this method is only the public face users look for.
        from surgery.core.saved import save_patch

        return save_patch(self, directory, overwrite=overwrite)

    def plan(self) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """Per edit, the updates `target += left @ right` that `apply` adds (computed from the weights as they
        are now; a loaded patch's are the saved factors): what `save` writes and what lanes add per row."""
        return [updates(self.adapter, e) for e in self.edits]

    def _restore(self) -> None:
        try:
            # Only a tensor nobody else changed while the patch was applied is bitwise back to its
            # old contents afterwards; cached SVDs of its old version then stay valid (a sweep that
            # patches one weight again and again decomposes it once).
            untouched = [(b, before) for b, before, after_apply in self._versions.values()
                         if canonical_version(self.adapter, b) == after_apply]
            with torch.no_grad():
                _restore_saved(self.adapter, self._saved)
            for base, before in untouched:
                state(self.adapter).version_aliases[(id(base), base._version)] = before
            state(self.adapter).svd_cache.update(self._svds)
        finally:
            self._saved, self._versions, self._svds, self.active = [], {}, {}, False
            state(self.adapter).lock.release()


@interruptible
def _prepare(adapter: Adapter, plan) -> tuple[list, dict, dict]:
    """Everything apply needs, computed before anything changes (an interrupt here is raised at once).

    `plan` is the patch's updates per edit (`Patch.plan`: computed from the weights as they are now,
    so edits of one weight do not see each other; a loaded patch's saved factors). Also the versions
    of the tensors they change, and the cached SVDs of those weights, put back on revert (nested
    patches evict them).
    """
    pending = [u for per_edit in plan for u in per_edit]
    befores = {id(base_of(t)): (base_of(t), canonical_version(adapter, t)) for t, _, _ in pending}
    # (a set, not any(generator): a generator dropped half-way is finalised, and a Ctrl-C landing in its
    # finaliser would be printed as "Exception ignored" and lost)
    svds = {k: entry for k, entry in state(adapter).svd_cache.items() if {s.id for s in entry[0]} & befores.keys()}
    return pending, befores, svds


def as_edit(spec) -> Edit:
    """An Edit from an Edit or a dict (fields: block, weight, idx, head, op, value, side)."""
    if isinstance(spec, Edit):
        return spec
    if isinstance(spec, dict):
        try:
            return Edit(**spec)
        except TypeError as e:
            raise SurgeryError(f"bad edit spec {spec!r}: {e}; fields: block, weight, idx, head, op, value, side") from None
    raise SurgeryError(f"an edit must be an Edit or a dict, got {type(spec).__name__}: {spec!r}")


def validate_edit(model, e: Edit) -> Edit:
    """Check an edit against a model before anything is touched; return it with defaults filled in
    (the side, the constant's value) as `patch` applies it. Raises ValueError naming what is valid."""
    adapter = wrap(model)
    e = replace(e, block=as_int(e.block), idx=as_int(e.idx), head=as_int(e.head),
                value=as_int(e.value) if e.op == "keep_top" else e.value)  # numpy ints from tables are ints
    check_location(adapter, e.block, e.weight, e.head)
    if e.weight in ("OV", "QK") and e.head is None:
        raise SurgeryError(f"weight {e.weight!r} is per head: give head=0..{adapter.n_heads - 1}")
    if e.op not in OPS:
        raise SurgeryError(f"op={e.op!r} is not an edit; valid: {', '.join(map(repr, OPS))}")
    side = check_side(e.side if e.side is not None else DEFAULT_SIDE[e.weight])
    rank = adapter.rank(e.weight)
    if e.op != "keep_top" and (isinstance(e.idx, bool) or not isinstance(e.idx, int) or not 0 <= e.idx < rank):
        raise SurgeryError(f"idx={e.idx!r} is out of range: {e.weight} has {rank} singular triples (valid: 0..{rank - 1})")
    value = e.value
    if e.op == "constant":
        value = 1.0 / adapter.d_model if value is None else _finite_scalar(value, "constant")
    elif e.op == "scale":
        if value is None:
            raise SurgeryError("op='scale' needs value=<factor for the singular value>")
        value = _finite_scalar(value, "scale")
    elif e.op == "zero":
        if value is not None:
            raise SurgeryError(f"op='zero' takes no value, got {value!r}")
    elif e.op == "keep_top":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= rank:
            raise SurgeryError(f"op='keep_top' needs value=k, the number of triples to keep (0..{rank}), got {value!r}")
    elif e.op == "replace":
        dim = _side_dim(adapter, e.weight, side)
        try:
            value = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
        except (TypeError, ValueError, RuntimeError):
            raise SurgeryError(f"op='replace' needs value=a vector of {dim} numbers, got {type(value).__name__}") from None
        if value.shape != (dim,):
            raise SurgeryError(f"op='replace' on the {side} side of {e.weight} needs a vector of shape ({dim},), "
                               f"got shape {tuple(value.shape)}")
        if not torch.isfinite(value).all():
            raise SurgeryError("op='replace' value has non-finite entries")
    return replace(e, side=side, value=value)


def _finite_scalar(value, op: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise SurgeryError(f"op={op!r} needs a real number as value, got {value!r}") from None
    if not math.isfinite(v):
        raise SurgeryError(f"op={op!r} value must be finite, got {v}")
    return v


def _side_dim(adapter: Adapter, weight: str, side: str) -> int:
    if weight == "K":
        return adapter.d_model if side == "in" else adapter.d_mlp
    if weight == "V":
        return adapter.d_mlp if side == "in" else adapter.d_model
    return adapter.d_model


def _indices(adapter: Adapter, e: Edit) -> range:
    return range(e.value, adapter.rank(e.weight)) if e.op == "keep_top" else range(e.idx, e.idx + 1)


def _check_disjoint(adapter: Adapter, edits) -> None:
    """Two edits of the same triple in one patch have no single meaning: refuse them."""
    seen: dict[tuple, set] = {}
    for e in edits:
        where = (e.block, e.weight, e.head)
        idx = set(_indices(adapter, e))
        if seen.get(where, set()) & idx:
            raise SurgeryError(f"two edits touch the same singular triple of block {e.block} {e.weight}"
                               f"{'' if e.head is None else f' head {e.head}'}; combine them into one edit")
        seen.setdefault(where, set()).update(idx)


def updates(model, e: Edit) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The low-rank update `target += left @ right` that realises one edit, as (target, left, right).

    The single source of truth for what an edit does: `Patch` applies these, and the lane engine
    (`surgery.behaviour.lanes`) adds them to a forward instead. `e` must be validated
    (`validate_edit`); the update is computed from the weights as they are now. `target` is a live
    view of one parameter ([d_in, d_out], possibly transposed); left [rows of target, r] and
    right [r, columns of target] are in the SVD's dtype (float64 on the CPU). Empty for an edit
    that changes nothing (keep_top of every triple).
    """
    adapter = wrap(model)
    svd = decompose(adapter, e.block, e.weight, head=e.head)
    r = _indices(adapter, e)
    if not r:  # keep_top(rank) keeps everything
        return []
    J = slice(r.start, r.stop)  # a view, cheaper than indexing with a list
    vecs = svd.vectors(e.side)[:, J]
    if e.op in ("constant", "replace"):
        new = (torch.full_like(vecs[:, 0], e.value) if e.op == "constant" else e.value.to(vecs)).unsqueeze(1)
        C = new - vecs
    else:
        C = (e.value - 1.0 if e.op == "scale" else -1.0) * vecs  # zero and keep_top remove
    fs = factors(adapter, e.block, e.weight)
    if len(fs) == 1:  # K or V: W @ V_J = U_J diag(S_J) and U_J.T @ W = diag(S_J) V_J.T
        (W,) = fs
        S = svd.S[J]
        if e.side == "out":
            return [(W, svd.U[:, J] * S, C.mT)]
        return [(W, C, (svd.V[:, J] * S).mT)]
    A, B = fs[0][e.head], fs[1][e.head]
    if e.side == "out":
        return [(B, B.detach().to(C) @ svd.V[:, J], C.mT)]
    return [(A, C, svd.U[:, J].mT @ A.detach().to(C))]


def _save(adapter: Adapter, target: torch.Tensor) -> torch.Tensor:
    """A copy of the slice about to be edited, in a reused buffer.

    Reuse matters at scale: a fresh 256 MB allocation (GPT-J's K) costs several times the copy
    itself in page faults. The adapter keeps at most two spare buffers per shape (`state(adapter).scratch`).
    """
    spares = state(adapter).scratch.get((target.shape, target.dtype, target.device))
    buf = spares.pop() if spares else torch.empty(target.shape, dtype=target.dtype, device=target.device)
    return buf.copy_(target)


def _restore_saved(adapter: Adapter, saved) -> None:
    """Copy every saved slice back, last edit first, and keep the buffers for the next patch."""
    for target, copy in reversed(saved):
        target.copy_(copy)
        spares = state(adapter).scratch.setdefault((copy.shape, copy.dtype, copy.device), [])
        if len(spares) < 2:
            spares.append(copy)


# A rank-1 update of a large matrix is memory-bound: `addr_` streams it once, where CPU `addmm_`
# with an inner dimension of 1 took twice as long (measured, 2 cores, float32: 6.8 vs 14.1 ms at
# 4096x16384, 1.4 vs 3.4 ms at 2048x8192) but was faster below about 2M entries (6 vs 61 us at 128x512).
_OUTER_PRODUCT_MIN = 1 << 21


def _add_product(target: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """target += left @ right, in place, rounding once to the target's dtype."""
    if target.dtype in (torch.float32, torch.float64):
        if left.shape[1] == 1 and target.numel() >= _OUTER_PRODUCT_MIN:
            target.addr_(left[:, 0].to(target), right[0].to(target))
        else:
            target.addmm_(left.to(target), right.to(target))
    else:  # bf16/fp16: form the sum in float32 so the update is not rounded to 8 bits before adding
        target.copy_(torch.addmm(target.float(), left.float().to(target.device), right.float().to(target.device)))

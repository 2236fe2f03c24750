"""Edits as files: `Patch.save(DIR)` writes a patch to a folder, `load_patch(DIR, model)` reads it back.

A saved patch is a folder of three files:

    spec.json            format version; the edits (surgery.Edit fields); the decomposition that defined
                         them (method, dtype, sign rule); svd-surgery, torch and transformers versions;
                         the model's class and dimensions; each update's target; and the SHA-256 of every
                         tensor the patch touches, as it was before the edit
    updates.safetensors  the factors of every update `target += left @ right` exactly as `Patch.apply`
                         adds them (surgery.core.patching `_updates`), and `replace` values
    manifest.json        the size and SHA-256 of the other two files

A loaded patch adds the saved factors, never factors recomputed from a new SVD (another machine's
LAPACK may pick other signs or round differently), so on the same device it gives bitwise the weights
the original patch gave. It is refused, before any weight changes, on a model whose touched tensors
differ from the saved hashes (named, with both hashes), on a damaged file (named), and on a newer
format. Folders are written atomically (surgery.files.atomic_folder) and byte for byte the same for
the same patch of the same weights, so the manifest's hash (`SavedPatch.digest`) identifies one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from adapters import Adapter, wrap
from surgery.core.decomposition import ContentStamp, base_of, canonical_version, factors
from surgery.core.patching import Edit, Patch
from surgery.core.state import state
from surgery.errors import SurgeryError, load_first
from surgery.files import file_sha256, read_json_object

__all__ = ["FORMAT", "FORMAT_VERSION", "SavedPatch", "load_patch", "save_patch", "tensor_sha256"]

FORMAT = "svd-surgery-patch"
FORMAT_VERSION = 1
SPEC, UPDATES, MANIFEST = "spec.json", "updates.safetensors", "manifest.json"

# The factors whose product is each weight (surgery.core.decomposition.factors), by the names the docs use.
FACTOR_NAMES = {"K": ("W_in",), "V": ("W_out",), "OV": ("W_V", "W_O"), "QK": ("W_Q", "W_K")}
SIGN_RULE = ("in each triple the entry of largest magnitude of the anchor vector is positive (the first such "
             "entry on ties); the anchor is U for K and QK, V for V and OV (docs/core.md, Sign rule)")
# The model's dimensions a saved patch must agree with (the adapter declares them from the config).
DIMENSIONS = ("n_blocks", "n_heads", "d_model", "d_head", "d_mlp")


class SavedPatch(Patch):
    """A Patch read from a folder: `apply()` adds the saved factors instead of computing them."""

    def __init__(self, model, edits, records, tensors, path: Path, digest: str, spec: dict):
        super().__init__(model, edits)
        self._records = records
        """Per update, in the order apply adds them: (edit index, factor name, saved tensor name, left, right)."""
        self._tensors = tensors
        """Saved tensor name -> {"dtype", "shape", "sha256"} of each touched tensor before the edit."""
        self._checked: dict[int, tuple] = {}
        """id(tensor) -> its state when its hash was last found right (hash again only after a change)."""
        self.path = path
        self.digest = digest
        """SHA-256 of manifest.json: one value that names exactly these files."""
        self.spec = spec

    def plan(self) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """The saved updates on this model's live tensors, after checking they are still the saved ones."""
        plan = [[] for _ in self.edits]
        for i, factor, name, left, right in self._records:
            target = _target(self.adapter, self.edits[i], factor)
            self._verify(target, name)
            plan[i].append((target, left, right))
        return plan

    def _verify(self, target: torch.Tensor, saved_name: str) -> None:
        """Refuse a tensor whose contents differ from the hash saved for it."""
        base = base_of(target)
        # The version counter alone misses `model.to(dtype)`: it swaps the data and keeps id and version.
        now = ContentStamp(base, canonical_version(self.adapter, base))
        if self._checked.get(id(base)) == now:
            return
        _check_tensor(self.adapter, base, saved_name, self._tensors[saved_name], self.path)
        self._checked[id(base)] = now


def save_patch(patch: Patch, directory, *, overwrite: bool = False) -> Path:
    """Write `patch` (not applied) to the folder `directory`, atomically; returns its path."""
    if not isinstance(patch, Patch):
        raise SurgeryError(f"save_patch takes a surgery.Patch, got {type(patch).__name__}")
    directory = Path(directory)
    _check_writable(directory, overwrite)
    if patch.active:
        raise SurgeryError("this patch is applied: save it before applying it or after reverting it (its "
                           "updates are defined on the weights as they are without it)")
    adapter = patch.adapter
    with state(adapter).lock:  # no other thread may edit the weights between planning and hashing
        plan = patch.plan()
        names = _parameter_names(adapter)
        tensors, updates, arrays = {}, [], {}
        for i, per_edit in enumerate(plan):
            e = patch.edits[i]
            for target, left, right in per_edit:
                k = len(updates)
                base = base_of(target)
                name = names.get(base.untyped_storage().data_ptr())
                if name is None:
                    raise RuntimeError(f"the tensor edited by {e} is not a parameter of the model")
                if name not in tensors:
                    tensors[name] = {"dtype": _dtype_name(base.dtype), "shape": list(base.shape),
                                     "sha256": tensor_sha256(base)}
                entry = {"edit": i, "factor": _factor_of(adapter, e, target), "tensor": name,
                         "shape": list(target.shape)}
                for side, t in (("left", left), ("right", right)):
                    key = f"updates.{k}.{side}"
                    arrays[key], entry[f"{side}_stride"] = _storable(t)
                    entry[side] = key
                updates.append(entry)
    edits = []
    for i, e in enumerate(patch.edits):
        d = {f: getattr(e, f) for f in ("block", "weight", "idx", "head", "op", "value", "side")}
        if isinstance(e.value, torch.Tensor):  # replace: the vector goes into the safetensors file
            key = f"edits.{i}.value"
            arrays[key] = e.value.detach().cpu().contiguous().clone()
            d["value"] = {"tensor": key}
        edits.append(d)
    dtypes = sorted({_dtype_name(t.dtype) for per_edit in plan for _, left, right in per_edit for t in (left, right)})
    spec = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library": _versions(),
        "model": _identity(adapter),
        "decomposition": {"method": "exact", "dtype": ", ".join(dtypes), "fold_ln": False, "sign_rule": SIGN_RULE},
        "edits": edits,
        "updates": updates,
        "tensors": tensors,
    }
    return _write(directory, spec, arrays, overwrite)


def load_patch(directory, model) -> SavedPatch:
    """The patch saved in `directory`, on `model` (a loaded model or adapter), not applied.

    Refused (SurgeryError, nothing touched) when a file is missing or its hash differs from the
    manifest, the format is newer than this library reads, the model's dimensions differ, or a
    tensor the patch edits differs from the one it was saved for.
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise SurgeryError(f"load_patch(DIR, model) takes the folder first, got {type(directory).__name__}")
    if isinstance(model, (str, os.PathLike)):
        raise load_first("load_patch", model)
    adapter = wrap(model)
    directory = Path(directory)
    digest = _verify_files(directory)
    spec = read_json_object(directory / SPEC)
    _check_format(spec, directory / SPEC)
    _check_dimensions(adapter, spec, directory)
    try:
        from safetensors.torch import load_file

        arrays = load_file(directory / UPDATES)
    except Exception as e:  # the manifest hash matched, so this is a file written by something else
        raise SurgeryError(f"{directory / UPDATES} is not a readable safetensors file: "
                           f"{type(e).__name__}: {e}") from None
    try:
        edits = [_edit_from(d, arrays) for d in spec["edits"]]
        tensors = {name: dict(t) for name, t in spec["tensors"].items()}
        records = []
        for entry in spec["updates"]:
            name = entry["tensor"]
            if name not in tensors:
                raise KeyError(f"update target {name!r} has no entry in 'tensors'")
            records.append((int(entry["edit"]), entry["factor"], name, _factor_tensor(arrays, entry, "left"),
                            _factor_tensor(arrays, entry, "right")))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise SurgeryError(f"{directory / SPEC} is malformed ({type(e).__name__}: {e}); "
                           f"it was not written by svd-surgery's save_patch") from None
    patch = SavedPatch(adapter.model, edits, [], tensors, directory, digest, spec)  # validates the edits
    placed = []
    for i, factor, name, left, right in records:
        if not 0 <= i < len(patch.edits) or factor not in FACTOR_NAMES[patch.edits[i].weight]:
            raise SurgeryError(f"{directory / SPEC}: update of edit {i} names factor {factor!r}, which that edit "
                               f"does not have")
        target = _target(adapter, patch.edits[i], factor)
        if left.shape[0] != target.shape[0] or right.shape[-1] != target.shape[1] or left.shape[1] != right.shape[0]:
            raise SurgeryError(f"{directory / UPDATES}: update factors {tuple(left.shape)} @ {tuple(right.shape)} "
                               f"do not fit the target of shape {tuple(target.shape)}")
        patch._verify(target, name)
        # On the target's device once, not at every apply; dtype and strides as saved (.to keeps them).
        placed.append((i, factor, name, left.to(target.device), right.to(target.device)))
    patch._records = placed
    return patch


def _not_replaceable(directory) -> str | None:
    """Why overwrite must not replace `directory`; None when it holds a saved patch."""
    manifest = Path(directory) / MANIFEST
    try:
        if json.loads(manifest.read_text()).get("format") == FORMAT:
            return None
    except (OSError, ValueError, AttributeError):
        pass
    return f"it does not hold a saved patch (no {MANIFEST} with format {FORMAT!r})"


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes in memory order (contiguous, on the CPU); dtype and shape are recorded beside it."""
    data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(data).hexdigest()


# ---- writing ----------------------------------------------------------------------------------------
def _write(directory: Path, spec: dict, arrays: dict, overwrite: bool) -> Path:
    from surgery.files import atomic_folder

    with atomic_folder(directory, overwrite=overwrite, replaceable=_not_replaceable) as tmp:
        (tmp / SPEC).write_text(json.dumps(spec, indent=2, allow_nan=False) + "\n")
        (tmp / UPDATES).write_bytes(_safetensors_bytes(arrays))
        files = {name: {"bytes": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)}
                 for name in (SPEC, UPDATES)}
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def _safetensors_bytes(arrays: dict) -> bytes:
    """A safetensors file whose bytes depend only on the tensors.

    safetensors writes its JSON header from a hash map, so the key order (and the file's hash)
    changed from call to call; the header is rewritten with sorted keys, the data left as it is.
    """
    from safetensors.torch import save

    raw = save(arrays, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header with spaces to keep the data aligned
    return len(header).to_bytes(8, "little") + header + raw[8 + n:]


def _check_writable(directory: Path, overwrite: bool) -> None:
    """Refuse an existing folder before any work (atomic_folder checks again when it renames)."""
    if directory.exists() and not overwrite:
        raise SurgeryError(f"{directory} already exists; choose another folder, or pass overwrite=True to replace it")
    if directory.exists() and overwrite:
        why = _not_replaceable(directory) if directory.is_dir() else "it is not a folder"
        if why:
            raise SurgeryError(f"not replacing {directory}: {why}")


def _storable(t: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """A contiguous CPU copy, and the strides of `t`.

    apply adds `left @ right` in the layouts `_updates` made (`C.mT` is a transposed view); a loaded
    patch rebuilds the same strides, so the same BLAS route runs and rounds the same way.
    """
    return t.detach().cpu().contiguous().clone(), list(t.stride())


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("svd-surgery", "torch", "transformers", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    out["torch"] = torch.__version__
    return out


def _identity(adapter: Adapter) -> dict:
    config = getattr(adapter.model, "config", None)
    return {"class": type(adapter.model).__name__, "adapter": type(adapter).__name__,
            "model_type": getattr(config, "model_type", None),
            **{k: getattr(adapter, k) for k in DIMENSIONS}}


def _parameter_names(adapter: Adapter) -> dict[int, str]:
    """Storage address -> the first name of each parameter (a tied parameter has several)."""
    names = {}
    for name, p in adapter.model.named_parameters():
        names.setdefault(p.untyped_storage().data_ptr(), name)
    return names


def _factor_of(adapter: Adapter, e: Edit, target: torch.Tensor) -> str:
    """Which factor of the edited weight an update's target is (K/V: the weight; OV/QK: one of two)."""
    for name in FACTOR_NAMES[e.weight]:
        t = _target(adapter, e, name)
        if (t.data_ptr(), t.shape, t.stride()) == (target.data_ptr(), target.shape, target.stride()):
            return name
    raise RuntimeError(f"the target of {e} is none of {FACTOR_NAMES[e.weight]}")


def _target(adapter: Adapter, e: Edit, factor: str) -> torch.Tensor:
    t = factors(adapter, e.block, e.weight)[FACTOR_NAMES[e.weight].index(factor)]
    return t if e.head is None else t[e.head]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---- reading ----------------------------------------------------------------------------------------
def _verify_files(directory: Path) -> str:
    """Check the manifest's format and every file's size and hash; return the manifest's SHA-256."""
    if not directory.is_dir():
        if directory.exists():
            raise SurgeryError(f"{directory} is a file; a saved patch is a folder holding {MANIFEST}, {SPEC}, "
                               f"{UPDATES}")
        raise FileNotFoundError(f"no saved patch at {directory}")
    manifest_file = directory / MANIFEST
    if not manifest_file.is_file():
        raise SurgeryError(f"{directory} is not a saved patch: it has no {MANIFEST} (saved patches are written by "
                           f"Patch.save / surgery edit-eval --save-edit)")
    manifest = read_json_object(manifest_file)
    _check_format(manifest, manifest_file)
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {SPEC, UPDATES}:
        raise SurgeryError(f"{manifest_file} must list {SPEC} and {UPDATES}, got {sorted(files or {})}")
    for name, want in files.items():
        path = directory / name
        if not path.is_file():
            raise SurgeryError(f"{path} is missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != want.get("bytes"):
            raise SurgeryError(f"{path} is truncated or damaged: {size} bytes, the manifest says {want.get('bytes')}")
        got = file_sha256(path)
        if got != want.get("sha256"):
            raise SurgeryError(f"{path} is damaged: its SHA-256 is {got}, the manifest says {want.get('sha256')}")
    return file_sha256(manifest_file)




def _check_format(d: dict, path: Path) -> None:
    if d.get("format") != FORMAT:
        raise SurgeryError(f"{path} is not a saved patch: format {d.get('format')!r}, expected {FORMAT!r}")
    v = d.get("format_version")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SurgeryError(f"{path}: format_version must be a positive integer, got {v!r}")
    if v > FORMAT_VERSION:
        raise SurgeryError(f"{path} is in saved-patch format version {v}; this svd-surgery reads versions up to "
                           f"{FORMAT_VERSION}: upgrade svd-surgery to load it")


def _check_dimensions(adapter: Adapter, spec: dict, directory: Path) -> None:
    saved = spec.get("model") if isinstance(spec.get("model"), dict) else {}
    here = _identity(adapter)
    diff = [f"{k} {saved.get(k)} (saved) vs {here[k]} (this model)" for k in DIMENSIONS if saved.get(k) != here[k]]
    if diff:
        raise SurgeryError(f"the patch in {directory} was saved for another model shape "
                           f"({saved.get('class')}, this is {here['class']}): " + "; ".join(diff))


def _edit_from(d: dict, arrays: dict) -> Edit:
    value = d["value"]
    if isinstance(value, dict):
        value = arrays[value["tensor"]]
    return Edit(block=d["block"], weight=d["weight"], idx=d["idx"], head=d["head"], op=d["op"], value=value,
                side=d["side"])


def _factor_tensor(arrays: dict, entry: dict, side: str) -> torch.Tensor:
    """A saved factor with the strides it had when apply computed it."""
    t, stride = arrays[entry[side]], entry[f"{side}_stride"]
    if t.dim() != 2 or t.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{entry[side]} must be a float32/float64 matrix, got {t.dtype} of shape {tuple(t.shape)}")
    if not _dense_2d(tuple(t.shape), stride):
        raise ValueError(f"{side}_stride {stride!r} is not a row- or column-major layout of shape {tuple(t.shape)}")
    return torch.empty_strided(t.shape, stride, dtype=t.dtype).copy_(t)


def _dense_2d(shape: tuple[int, int], stride) -> bool:
    """Strides of a row- or column-major matrix (the stride of a dimension of size 1 moves nothing: any is fine)."""
    if not (isinstance(stride, list) and len(stride) == 2 and all(type(s) is int and s >= 0 for s in stride)):
        return False
    (n0, n1), (s0, s1) = shape, stride
    row = (n0 == 1 or s0 == n1) and (n1 == 1 or s1 == 1)
    col = (n0 == 1 or s0 == 1) and (n1 == 1 or s1 == n0)
    return row or col


def _check_tensor(adapter: Adapter, base: torch.Tensor, saved_name: str, saved: dict, directory: Path) -> None:
    """Refuse unless the tensor has the saved dtype, shape and SHA-256."""
    here_name = _parameter_names(adapter).get(base.untyped_storage().data_ptr(), "?")
    called = here_name if here_name == saved_name else f"{here_name} (saved as {saved_name})"
    dtype, shape = _dtype_name(base.dtype), list(base.shape)
    if dtype != saved.get("dtype") or shape != saved.get("shape"):
        raise SurgeryError(f"{called} is {dtype} {tuple(shape)} here, but the patch in {directory} was saved for "
                           f"{saved.get('dtype')} {tuple(saved.get('shape') or ())}: load the model in the dtype "
                           f"it was edited in")
    got = tensor_sha256(base)
    if got != saved.get("sha256"):
        raise SurgeryError(f"{called} differs from the tensor the patch in {directory} was saved for: SHA-256 "
                           f"{got} here, {saved.get('sha256')} saved; this patch edits other weights than these")

"""A model built from its config and filled from a checkpoint directory's safetensors, every tensor checked first.

    model = read_model(GPT2LMHeadModel, config, "ckpt/", dtype=torch.bfloat16, device="cuda")

Why not `from_pretrained`: it fills a tensor the file lacks with random initialisation (a warning in
a log), loads NaN, and unpickles `pytorch_model.bin`. Here a checkpoint is refused, in one line
naming the file and the tensor, unless its files are whole and it holds exactly the tensors the
model's `state_dict` has: the same names and shapes, all finite. Allowed differences: the attention
buffers older transformers saved (`.attn.bias`, `.attn.masked_bias`), tied copies (GPT-2's
`lm_head.weight` is `wte.weight`: present or not, never different), and the base-model prefix
(openai's GPT-2 files say `h.0...`, the model `transformer.h.0...`). Pickle files (`.bin`, `.pt`,
`.pth`, `.ckpt`) are never opened: unpickling can run arbitrary code.

Memory: the parameters are built on the meta device (no allocation, no random init), then each
tensor is read from the memory-mapped file and cast to `dtype` on `device` one at a time, so
GPT-J in bf16 peaks near its 12 GB plus one tensor, never the 24 GB of float32.
"""
from __future__ import annotations

import json
import math
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from surgery.errors import SurgeryError
from surgery.files import read_json_object

__all__ = ["read_model", "check_config_ints", "tensor_index", "read_header", "tied_aliases", "retie",
           "WEIGHTS_FILE", "INDEX_FILE", "LEGACY_BUFFERS", "PICKLE_SUFFIXES"]

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"  # a sharded checkpoint: {"weight_map": {tensor: shard file}}
LEGACY_BUFFERS = (".attn.bias", ".attn.masked_bias")
"""Causal-mask buffers that transformers 4.x saved with GPT-2/GPT-J blocks; models no longer keep them."""
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
             "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_TORCH_DTYPE = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_MAX_HEADER = 100_000_000  # the safetensors format's own limit on the JSON header


@dataclass(frozen=True)
class Entry:
    """Where one tensor's bytes are: its file, dtype ("F32"...), shape and byte range after the header."""

    file: Path
    dtype: str
    shape: tuple
    start: int
    end: int


def read_model(model_cls, config, directory, *, dtype: torch.dtype | None = None, device=None):
    """`model_cls(config)` holding the checked tensors of `directory` (see the module docstring), in eval mode.

    dtype: floating tensors are cast to it as they are read (None: the checkpoint's, as transformers'
    "auto": its first floating tensor's). device: where the tensors are read to (default cpu).
    Raises SurgeryError (FileNotFoundError when there are no weights at all) naming the file and tensor.
    """
    directory = Path(directory)
    entries, where = tensor_index(directory)
    dtype = dtype or next((_TORCH_DTYPE[e.dtype] for e in entries.values() if e.dtype in _TORCH_DTYPE), torch.float32)
    model = _build(model_cls, config, dtype, directory)
    aliases = tied_aliases(model)
    names = _check_names(model, entries, aliases, where)
    state = _read(entries, names, dtype, torch.device("cpu") if device is None else torch.device(device))
    _check_tied(state, aliases, entries, names)
    model.load_state_dict({k: v for k, v in state.items() if k not in aliases}, strict=False, assign=True)
    retie(model, aliases)  # assign replaced the shared Parameter: share the new one again
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # every name was checked above: this would be a bug here, not a bad file
        raise RuntimeError(f"tensors not loaded from {where}: {left[:3]}")
    if device is not None:
        model.to(device)  # the buffers built with the model (GPT-J's rotary table); the parameters are there
    return model.eval()


def tied_aliases(model) -> dict[str, str]:
    """Names of parameters that are another parameter object (tied), mapped to the first name of that object."""
    first, aliases = {}, {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def retie(model, aliases: dict[str, str]) -> None:
    """Make each alias the very Parameter its canonical name holds (after `to_empty` or `assign` broke the tie)."""
    for alias, canonical in aliases.items():
        owner, _, leaf = alias.rpartition(".")
        setattr(model.get_submodule(owner), leaf, model.get_parameter(canonical))


def check_config_ints(config: dict, file, positive=(), optional=()) -> None:
    """The numbers a model is built from are positive integers (`optional` ones may be null), heads divide the width.

    Checked before building: transformers would otherwise fail deep inside a constructor, or build nonsense.
    """
    for key in (*positive, *optional):
        value = config.get(key)
        if key not in config or (value is None and key in optional):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SurgeryError(f"{file}: {key} must be a positive integer{' or null' * (key in optional)}, "
                               f"got {value!r}")
    width_key = "n_embd" if "n_embd" in config else "hidden_size"
    width, heads = config.get(width_key), config.get("n_head")
    if isinstance(width, int) and isinstance(heads, int) and heads > 0 and width % heads:
        raise SurgeryError(f"{file}: n_head={heads} does not divide {width_key}={width}")


# --- finding and checking the files ---------------------------------------------------------------

def tensor_index(directory: Path) -> tuple[dict[str, Entry], Path]:
    """Every tensor of the checkpoint in `directory` -> where it is, with every file's header checked.

    Returns (entries, the file to name in messages: model.safetensors or the index). Pickle
    checkpoints are refused without being opened.
    """
    single, index = directory / WEIGHTS_FILE, directory / INDEX_FILE
    for f in (single, index):
        if f.is_symlink() and not f.exists():
            raise SurgeryError(f"{f} is a broken link (to {f.readlink()}): an unfinished download or a moved cache")
    if single.is_file():
        return read_header(single), single
    if index.is_file():
        return _sharded(index), index
    pickles = sorted(p for p in directory.iterdir()
                     if p.is_file() and (p.suffix in PICKLE_SUFFIXES or p.name.endswith(".bin.index.json")))
    if pickles:
        raise SurgeryError(_pickle_refusal(pickles[0]))
    found = sorted(p.name for p in directory.glob("*.safetensors"))
    raise FileNotFoundError(f"{directory} has no weights: expected {WEIGHTS_FILE} or {INDEX_FILE}"
                            + (f" (found {', '.join(found)}, which are not read)" if found else ""))


def _pickle_refusal(file: Path) -> str:
    return (f"{file} is a pickle checkpoint: refused, since loading a pickle can run arbitrary code (only safetensors "
            f"are read); if you trust the file, convert it to {WEIGHTS_FILE} yourself and load that")


def read_header(file: Path) -> dict[str, Entry]:
    """The tensors a .safetensors file declares, checked against the file's size (a truncated file names its tensor)."""
    size = file.stat().st_size
    if size == 0:
        raise SurgeryError(f"{file} is empty (0 bytes): no tensors; the download or copy did not finish")
    with open(file, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else None
        if n is None or n > min(size - 8, _MAX_HEADER):
            raise SurgeryError(f"{file} is not a safetensors file or is truncated: its first 8 bytes announce a "
                               f"{n}-byte header, the file has {size} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SurgeryError(f"{file} is not a safetensors file: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise SurgeryError(f"{file} is not a safetensors file: its header is a JSON {type(header).__name__}")
    data = size - 8 - n
    entries = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _entry(file, name, h)
    past = sorted((e.start, name) for name, e in entries.items() if e.end > data)
    if past:
        e = entries[past[0][1]]
        more = f" (and {len(past) - 1} more tensors after it)" if len(past) > 1 else ""
        raise SurgeryError(f"{file} is truncated: tensor {past[0][1]!r} needs bytes {e.start}..{e.end} of the data, "
                           f"the file holds {data}{more}; the download or copy did not finish")
    return entries


def _entry(file: Path, name: str, h) -> Entry:
    ok = (isinstance(h, dict) and h.get("dtype") in _ITEMSIZE and isinstance(h.get("shape"), list)
          and all(isinstance(s, int) and s >= 0 for s in h["shape"]) and isinstance(h.get("data_offsets"), list)
          and len(h["data_offsets"]) == 2 and all(isinstance(o, int) and o >= 0 for o in h["data_offsets"]))
    if not ok:
        raise SurgeryError(f"{file}: tensor {name!r} has a malformed header entry {h!r} (known dtypes: "
                           f"{', '.join(_ITEMSIZE)})")
    start, end = h["data_offsets"]
    need = math.prod(h["shape"]) * _ITEMSIZE[h["dtype"]]
    if end - start != need:
        raise SurgeryError(f"{file}: tensor {name!r} occupies {end - start} bytes but its shape {h['shape']} of "
                           f"{h['dtype']} needs {need}")
    return Entry(file, h["dtype"], tuple(h["shape"]), start, end)


def _sharded(index: Path) -> dict[str, Entry]:
    """The tensors of a sharded checkpoint: every shard present, holding exactly what the index says."""
    weight_map = read_json_object(index).get("weight_map")
    if not (isinstance(weight_map, dict) and weight_map
            and all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())):
        raise SurgeryError(f"{index} has no weight_map (tensor name -> shard file)")
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or not shard.endswith(".safetensors"):
            if shard.endswith(PICKLE_SUFFIXES):
                raise SurgeryError(_pickle_refusal(index.parent / shard))
            raise SurgeryError(f"{index}: shard {shard!r} is not a .safetensors file in this directory")
    entries = {}
    for shard in sorted(set(weight_map.values())):
        file = index.parent / shard
        listed = sorted(k for k, v in weight_map.items() if v == shard)
        if not file.is_file():
            more = f" and {len(listed) - 1} more" if len(listed) > 1 else ""
            raise SurgeryError(f"{index}: shard {shard} is missing (it holds {listed[0]!r}{more}); the download or "
                               "copy did not finish")
        header = read_header(file)
        lacking = [k for k in listed if k not in header]
        if lacking:
            raise SurgeryError(f"{file}: tensor {lacking[0]!r} is listed in {index.name} but not in this shard")
        stray = [k for k in header if weight_map.get(k) != shard]
        if stray:
            said = f"places it in {weight_map[stray[0]]}" if stray[0] in weight_map else "does not list it"
            raise SurgeryError(f"{file}: tensor {stray[0]!r} is in this shard but {index.name} {said}")
        entries.update(header)
    return entries


def _check_names(model, entries: dict[str, Entry], aliases: dict, where: Path) -> dict[str, str]:
    """Model tensor name -> file tensor name; refuses missing, unexpected and wrongly shaped tensors."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    names = _match_prefix(model, [k for k in entries if not (k.endswith(LEGACY_BUFFERS) and k not in want)], want)
    missing = sorted(k for k in want if k not in names and k not in aliases)
    unknown = sorted(f for m, f in names.items() if m not in want)
    wrong = [f"{names[k]!r} is {tuple(entries[names[k]].shape)} in {entries[names[k]].file.name}, the config "
             f"makes it {want[k]}" for k in sorted(names) if k in want and tuple(entries[names[k]].shape) != want[k]]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor{'s' * (len(missing) > 1)} the config needs "
                        f"({_few(missing)}){_blocks_hint(want, names)}")
    if unknown:
        problems.append(f"{len(unknown)} unexpected tensor{'s' * (len(unknown) > 1)} ({_few(unknown)})")
    if wrong:
        problems.append("shapes differ from config.json: " + "; ".join(wrong[:3]))
    if problems:
        raise SurgeryError(f"{where} does not fit {where.parent / 'config.json'}: " + "; ".join(problems))
    return {m: f for m, f in names.items() if m in want}


def _match_prefix(model, file_names: list[str], want: dict) -> dict[str, str]:
    """Model name -> file name, adding or removing the base-model prefix as transformers does."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    has_body = bool(prefix) and isinstance(getattr(model, prefix, None), torch.nn.Module)
    dot = prefix + "."
    if has_body and file_names and not any(n.startswith(dot) for n in file_names):
        return {dot + n: n for n in file_names}  # a bare body's checkpoint (openai's gpt2) in a model with a head
    body_asked = prefix and not has_body and not any(k.startswith(dot) for k in want)
    if body_asked and any(n.startswith(dot) for n in file_names):
        return {(n[len(dot):] if n.startswith(dot) else n): n for n in file_names}  # a head checkpoint, body asked
    return {n: n for n in file_names}


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(map(repr, names[:n])) + (f" and {len(names) - n} more" if len(names) > n else "")


def _blocks_hint(want: dict, names: dict) -> str:
    """' (config.json has 3 blocks, the file 2)' when whole blocks are missing: the usual cause."""
    def blocks(keys):
        return {int(m.group(1)) for k in keys if (m := re.search(r"(?:^|\.)h\.(\d+)\.", k))}

    n_want, n_have = len(blocks(want)), len(blocks(k for k in names if k in want))
    return f"; config.json has {n_want} blocks, the file {n_have}" if n_have < n_want else ""


# --- building and reading ---------------------------------------------------------------------------

_BUILD_LOCK = threading.Lock()
_BUILDING = threading.local()


@contextmanager
def _parameters_on_meta():
    """Every Parameter this thread registers goes to the meta device (no memory, no init); buffers stay real.

    Buffers are kept because some are computed in the constructor and never saved (GPT-J's rotary
    table). Other threads are unaffected, and builds are serialised by a lock.
    """
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None and getattr(_BUILDING, "on", False):
            p = module._parameters[name]
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    with _BUILD_LOCK:
        torch.nn.Module.register_parameter = on_meta
        _BUILDING.on = True
        try:
            yield
        finally:
            _BUILDING.on = False
            torch.nn.Module.register_parameter = register


def _build(model_cls, config, dtype: torch.dtype, directory: Path):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the buffers built with the model (rotary tables) come out in dtype
    try:
        with _parameters_on_meta():
            model = model_cls(config)
        if hasattr(model, "tie_weights"):
            model.tie_weights()  # transformers 5 leaves meta parameters untied at construction
        return model
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:  # a config.json naming an impossible
        # model: an unknown activation is a KeyError in transformers' ACT2FN
        raise SurgeryError(f"{directory / 'config.json'} does not describe a buildable {model_cls.__name__}: "
                           f"{type(e).__name__}: {e}") from None
    finally:
        torch.set_default_dtype(old)


def _read(entries: dict[str, Entry], names: dict[str, str], dtype: torch.dtype, device: torch.device) -> dict:
    """Model name -> tensor on `device`, floating ones cast to `dtype`, each checked finite as it is read."""
    from safetensors import SafetensorError, safe_open

    by_file: dict[Path, list[str]] = {}
    for m, f in names.items():
        by_file.setdefault(entries[f].file, []).append(m)
    state = {}
    for file, models in by_file.items():
        try:
            with safe_open(str(file), framework="pt", device=str(device)) as fh:
                for m in models:
                    t = fh.get_tensor(names[m])
                    state[m] = _checked(t.to(dtype) if t.is_floating_point() else t, t, file, names[m])
                    del t
        except SafetensorError as e:  # the header passed our checks; the library still found a fault
            raise SurgeryError(f"{file} is corrupt: {e}") from None
    return state


def _all_finite(t: torch.Tensor, chunk: int = 1 << 24) -> bool:
    """torch.isfinite(t).all() without a bool mask the size of t (GPT-J's embedding: 206 MB of it)."""
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(chunk))


def _checked(t: torch.Tensor, stored: torch.Tensor, file: Path, name: str) -> torch.Tensor:
    if t.is_floating_point() and not _all_finite(t):
        bad = int((~torch.isfinite(stored)).sum())
        if bad:
            first = tuple(int(i) for i in (~torch.isfinite(stored)).nonzero()[0])
            raise SurgeryError(f"{file}: tensor {name!r} has {bad} non-finite value{'s' * (bad > 1)} (NaN or inf; "
                               f"the first at {first}): damaged weights are refused")
        raise SurgeryError(f"{file}: tensor {name!r} is finite as stored ({stored.dtype}) but overflows {t.dtype} "
                           f"(largest |value| {float(stored.abs().max()):.4g}): load it in bfloat16 or float32")
    return t


def _check_tied(state: dict, aliases: dict, entries: dict, names: dict) -> None:
    """A tied copy the file also holds must be the same tensor: the config says they are one."""
    for alias, canonical in aliases.items():
        if alias in state and not torch.equal(state[alias], state[canonical]):
            file = entries[names[alias]].file
            raise SurgeryError(f"{file}: tensor {names[alias]!r} differs from {names[canonical]!r}, but the config "
                               f"ties them (tie_word_embeddings): the checkpoint is not the model its config describes")

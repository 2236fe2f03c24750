"""The common interface every architecture adapter provides: dimensions, weights, embeddings, hooks."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Mapping, Sequence

import torch
from torch import nn

from surgery.errors import SurgeryError
from surgery.names import WEIGHTS  # noqa: F401  (re-exported by adapters)

BLOCK_HOOKS = ("resid_pre", "attn_out", "mlp_in", "mlp_hidden", "mlp_out", "resid_post")
"""Per-block hook points, named `blocks.{i}.{point}`; plus the model-level `embed` and `final`."""

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


@dataclass(frozen=True)
class EmbeddingSet:
    """A named set of embedding vectors `[n, d_model]` with one label per row."""

    name: str
    vectors: torch.Tensor
    labels: Sequence[str]
    side: str
    """"in" for vectors written into the residual stream, "out" for vectors read from it by a head."""


class LazyLabels(Sequence[str]):
    """Labels computed on demand (a 50k-token vocabulary is not decoded until someone asks)."""

    def __init__(self, n: int, label: Callable[[int], str]):
        self._n, self._label = n, label

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._label(j) for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return self._label(i % self._n)


def numbered(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def first_tensor(x):
    """The hidden-state tensor in a module output (transformers 4.x blocks return tuples, 5.x tensors)."""
    return x[0] if isinstance(x, tuple) else x


class Adapter:
    """Wraps one model; subclasses declare its dimensions and where each weight lives.

    Every weight accessor returns a `[d_in, d_out]` *view* of the real parameter (`y = x @ W`),
    so in-place edits through it change the model. Subclasses never infer orientation from shape.
    """

    model_classes: ClassVar[tuple[str, ...]] = ()
    """Class names (anywhere in the model's MRO) that this adapter wraps."""

    hook_table: ClassVar[Mapping[str, tuple]] = {}
    """Where each hook point lives: name -> (path, "pre" for the module's input | "post" for its output).

    Names in BLOCK_HOOKS are paths inside a block (`blocks()[i]`; "" is the block itself), "embed" and
    "final" paths inside `hook_root()`. A path may be a tuple of alternatives: the first the model has."""

    # Declared by subclasses in __init__.
    n_blocks: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int

    def __init__(self, model: nn.Module):
        self.model = model
        self.metadata = None  # a zoo's DTMetadata, set by the loader for decision transformers
        self.tokenizer = None  # an LM's tokenizer, if the user has one (labels tokens)

    @classmethod
    def matches(cls, model) -> bool:
        return any(c.__name__ in cls.model_classes for c in type(model).__mro__)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.model).__name__}: {self.n_blocks} blocks, "
                f"{self.n_heads} heads, d_model={self.d_model}, d_head={self.d_head}, d_mlp={self.d_mlp})")

    # ---- weights: subclasses implement ------------------------------------------------------
    def blocks(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    def mlp_in(self, block: int) -> torch.Tensor:
        """K: the MLP's first weight as a `[d_model, d_mlp]` view."""
        raise NotImplementedError

    def mlp_out(self, block: int) -> torch.Tensor:
        """V: the MLP's second weight as a `[d_mlp, d_model]` view."""
        raise NotImplementedError

    def attn_weights(self, block: int) -> dict[str, torch.Tensor]:
        """W_Q, W_K, W_V as `[n_heads, d_model, d_head]` views and W_O as `[n_heads, d_head, d_model]`."""
        raise NotImplementedError

    def ln_before(self, block: int, weight: str) -> nn.LayerNorm | None:
        """The LayerNorm whose output the weight reads (None for V, which reads MLP activations)."""
        raise NotImplementedError

    def embedding_sets(self) -> dict[str, EmbeddingSet]:
        """The embedding sets this model has, by DESIGN.md name."""
        raise NotImplementedError

    def hook_root(self) -> nn.Module:
        """The module that the "embed" and "final" paths of `hook_table` are relative to."""
        return self.model

    # ---- shared helpers -------------------------------------------------------------------------
    def hook_modules(self) -> dict[str, tuple[nn.Module, str]]:
        """Hook point name -> (module, "pre" | "post"), resolved from `hook_table`: embed, every block's, final."""
        table = self.hook_table
        points = {"embed": (self.hook_module(None, table["embed"][0]), table["embed"][1])}
        for i in range(self.n_blocks):
            for point in BLOCK_HOOKS:
                path, kind = table[point]
                points[f"blocks.{i}.{point}"] = (self.hook_module(i, path), kind)
        points["final"] = (self.hook_module(None, table["final"][0]), table["final"][1])
        return points

    def hook_module(self, block: int | None, path) -> nn.Module:
        """The module at `path` inside block `block` (None: inside `hook_root()`); a tuple: the first that exists."""
        root = self.hook_root() if block is None else self.blocks()[block]
        for p in (path,) if isinstance(path, str) else path:
            try:
                return root.get_submodule(p)
            except AttributeError:
                continue
        raise AttributeError(f"{type(root).__name__} has none of the modules {path!r}")

    def rank(self, weight: str) -> int:
        """Number of singular triples of a weight."""
        return self.d_head if weight in ("OV", "QK") else min(self.d_model, self.d_mlp)

    # ---- hooks ---------------------------------------------------------------------------------
    @property
    def hook_names(self) -> list[str]:
        return list(self.hook_modules())

    @contextmanager
    def hooks(self, fns: Mapping[str, HookFn]) -> Iterator[None]:
        """Run hook functions `fn(tensor, name) -> replacement | None` at named points, then remove them.

        Exactly the hooks added here are removed, on normal exit or any exception.
        """
        points = self.hook_modules()
        unknown = [n for n in fns if n not in points]
        if unknown:
            raise SurgeryError(f"unknown hook point(s) {unknown}; valid: 'embed', 'final' and "
                               f"'blocks.{{0..{self.n_blocks - 1}}}.{{{','.join(BLOCK_HOOKS)}}}'")
        handles = []
        try:
            for name, fn in fns.items():
                module, kind = points[name]
                handles.append(_register(module, kind, name, fn))
            yield
        finally:
            for h in handles:
                h.remove()

    def run_with_cache(self, *args, names: Sequence[str] | None = None, **kwargs):
        """Run the model and return `(output, {hook name: activation})` for the named points (default all)."""
        names = self.hook_names if names is None else list(names)
        cache: dict[str, torch.Tensor] = {}

        def store(t: torch.Tensor, name: str) -> None:
            cache[name] = t.detach()

        with self.hooks({n: store for n in names}), torch.no_grad():
            out = self.model(*args, **kwargs)
        return out, cache


def _register(module: nn.Module, kind: str, name: str, fn: HookFn):
    """Register one hook that passes the hidden-state tensor to fn and substitutes its return value."""
    if kind == "pre":
        def pre(mod, args, kwargs):
            if args:
                new = fn(args[0], name)
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"], name)
            return None if new is None else (args, {**kwargs, "hidden_states": new})
        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(mod, args, output):
        new = fn(first_tensor(output), name)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new
    return module.register_forward_hook(post)

"""The names the project's conventions fix (DESIGN.md), in one place that imports nothing.

Library modules, reports and the command line's `choices=` all read them from here, so a name
cannot drift between them, and `surgery --help` does not have to import torch to list them.
"""
from __future__ import annotations

WEIGHTS = ("K", "V", "OV", "QK")
"""MLP input ("K", [d_model, d_mlp]), MLP output ("V", [d_mlp, d_model]), per-head OV (W_V W_O) and QK (W_Q W_K^T)."""

SIDES = ("in", "out")
"""A triple's read side ("in", U) and write side ("out", V)."""

SIDE_WORDS = {"in": "read side", "out": "write side"}

DEFAULT_SIDE = {"K": "in", "V": "out", "OV": "out", "QK": "in"}
"""Which side a triple's sign is anchored on and a patch edits by default (the residual-facing one)."""

RESIDUAL_SIDES = {"K": ("in",), "V": ("out",), "OV": ("in", "out"), "QK": ("in", "out")}
"""Which sides of each weight face the residual stream."""

OPS = ("constant", "zero", "scale", "replace", "keep_top")
"""constant: set the vector to value * ones (the study's edit; default value 1/d_model).
zero: remove the triple. scale: multiply its singular value by value. replace: set the vector to
value (a 1-D tensor). keep_top: keep only the first value triples (idx is ignored)."""

SCALAR_OPS = ("constant", "zero", "scale", "keep_top")
"""The ops whose value is a number (or nothing): what a command line can express."""

REMOVAL_OPS = ("constant", "zero")
"""The edits that take one vector out (the study's constant, and zero): what validate applies to each triple."""

METHODS = ("exact", "gram", "randomized", "auto")
"""SVD routes (surgery.core.lowrank): exact LAPACK; GEMM-only Gram; randomized; auto (randomized, gram if unsure)."""

CORRECTIONS = ("holm", "bonferroni", "bh", "by", "none")
"""holm: family-wise error, valid under any dependence (default). bonferroni: the same, cruder.
bh: Benjamini-Hochberg false discovery rate. by: Benjamini-Yekutieli (FDR under any dependence).
none: no correction."""

DT_EMBEDDINGS = ("state_in", "action_in", "return_in", "time_in", "state_out", "action_out", "return_out")
LM_EMBEDDINGS = ("token_in", "token_out")

DTYPE_NAMES = ("float32", "fp32", "float16", "fp16", "bfloat16", "bf16")
"""Names accepted wherever a dtype is asked for (surgery.core.dtypes.parse_dtype)."""

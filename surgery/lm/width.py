"""GPT-2 against GPT-J on equal terms: how far beyond chance each singular vector's best token cosine is, at any width.

A raw cosine is not comparable across widths: a random unit direction's best |cos| with a 50k-token
vocabulary is about sqrt(2 ln(2 * 50k) / d), 0.17 at GPT-2-small's d=768 and 0.075 at GPT-J's 4096.
So "the cosines are lower in GPT-J" is expected with no change in structure at all. Here each
vector's best |cos| is turned into a z-score and p-value against the null law of that statistic
for random directions against the very same embedding set (`surgery.analysis.chance.null_for`, issue 3's
Monte Carlo null with an exact union-bound tail), which puts both models on one scale.
"""
from __future__ import annotations

import numpy as np
import torch

from adapters import wrap
from surgery.analysis.chance import null_for
from surgery.analysis.cosines import unit_rows
from surgery.core.decomposition import RESIDUAL_SIDES, decompose
from surgery.core.state import state
from surgery.errors import SurgeryError
from surgery.lm.semantic import top_tokens
from surgery.progress import progress as progress_bar
from surgery.stats import adjust_pvalues


def width_rows(model, weights=("K", "V", "OV"), blocks=None, k: int = 8, method: str = "gram",
               embedding: str = "token_out", draws: int | None = None, dtype: torch.dtype | None = None,
               progress: bool = False, desc: str = "lm width") -> list[dict]:
    """One row per residual-facing top-k singular vector: best |cos| with the embedding, chance level, z and p.

    progress: report the steps (the chance null, then each block's weights): at GPT-J width on a CPU each
    is tens of seconds.
    """
    adapter = wrap(model)
    sets = adapter.embedding_sets()
    if embedding not in sets:
        raise SurgeryError(f"embedding={embedding!r} is not an embedding set of this model; valid: {', '.join(sets)}")
    blocks = range(adapter.n_blocks) if blocks is None else list(blocks)
    bad = [b for b in blocks if not 0 <= b < adapter.n_blocks]
    if bad:  # before the null, which takes a while at GPT-J width
        raise SurgeryError(f"block={bad[0]} is out of range: this model has {adapter.n_blocks} blocks "
                           f"(valid: 0..{adapter.n_blocks - 1})")
    E = sets[embedding].vectors
    with progress_bar(1 + len(blocks) * len(weights), desc=desc, unit="step", enabled=progress) as bar:
        bar.set_postfix_str("chance null")
        null = null_for(E.float().cpu(), draws=draws)
        bar.update(1)
        return _rows(adapter, E, null, weights, blocks, k, method, dtype, bar)


def _rows(adapter, E, null, weights, blocks, k, method, dtype, bar) -> list[dict]:
    """width_rows' loop over blocks and weights, one progress step per (block, weight)."""
    E_unit = unit_rows(E.to(adapter.mlp_in(0).device))
    rows = []
    for b in blocks:
        for w in weights:
            bar.set_postfix_str(f"block {b} {w}")
            svd = decompose(adapter, b, w, dtype=dtype, method=method, k=min(k, adapter.rank(w)))
            heads = range(adapter.n_heads) if w in ("OV", "QK") else [None]
            for side in RESIDUAL_SIDES[w]:
                for h in heads:
                    X = svd.vectors(side) if h is None else svd.vectors(side)[h]
                    _, top, _, bottom = top_tokens(X, E_unit, 1)
                    best = torch.maximum(top[:, 0], -bottom[:, 0]).double().cpu().numpy()
                    for i, c in enumerate(best):
                        rows.append(dict(d_model=adapter.d_model, block=b, weight=w, head=h, side=side, idx=i,
                                         best_cos=float(c), chance_mean=null.mean, z=float(null.zscore(c)),
                                         p=float(null.pvalue(c))))
            bar.update(1)
        state(adapter).svd_cache.clear()  # one block's decompositions at a time
    return rows


def summarize(rows: list[dict], alpha: float = 0.01) -> dict:
    """Per weight: median best |cos|, the chance mean, median z, and the share beyond chance (raw and Holm-corrected)."""
    out = {}
    p_adj = adjust_pvalues(np.array([r["p"] for r in rows]), "holm") if rows else np.array([])
    for w in dict.fromkeys(r["weight"] for r in rows):
        sel = [i for i, r in enumerate(rows) if r["weight"] == w]
        cos = np.array([rows[i]["best_cos"] for i in sel])
        z = np.array([rows[i]["z"] for i in sel])
        p = np.array([rows[i]["p"] for i in sel])
        out[w] = dict(vectors=len(sel), median_best_cos=float(np.median(cos)), chance_mean=rows[sel[0]]["chance_mean"],
                      median_z=float(np.median(z)), beyond_chance=float((p < alpha).mean()),
                      beyond_chance_holm=float((p_adj[sel] < alpha).mean()))
    return out


def compare(models: dict, alpha: float = 0.01, progress: bool = False, **kwargs) -> str:
    """A plain-text table comparing models (name -> model) on raw cosines and on z-scores (kwargs: width_rows')."""
    lines = [f"{'model':<22}{'d_model':>8} {'weight':<6}{'vectors':>8}{'median|cos|':>12}{'chance':>8}"
             f"{'median z':>10}{f'p<{alpha}':>9}{'Holm':>7}"]
    for name, model in models.items():
        summary = summarize(width_rows(model, progress=progress, desc=f"lm width {name}", **kwargs), alpha)
        d = wrap(model).d_model
        for w, s in summary.items():
            lines.append(f"{name:<22}{d:>8} {w:<6}{s['vectors']:>8}{s['median_best_cos']:>12.4f}{s['chance_mean']:>8.4f}"
                         f"{s['median_z']:>10.2f}{s['beyond_chance']:>9.3f}{s['beyond_chance_holm']:>7.3f}")
    return "\n".join(lines)

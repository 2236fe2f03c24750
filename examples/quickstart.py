"""Decompose a decision transformer's MLP, compare K's singular vectors with the action outputs, patch one.

    python examples/quickstart.py            # the zoo's Hopper decision transformer, shipped with the package
"""
from __future__ import annotations

import torch

import surgery


def main() -> None:
    model = surgery.load("hopper")
    print(f"model: zoo 'hopper'\n{model}\n")
    actions = model.embedding_sets()["action_out"]
    unit = torch.nn.functional.normalize(actions.vectors.double(), dim=1)
    for block in range(model.n_blocks):
        U, S, V = surgery.decompose(model, block=block, weight="K")
        cos = unit @ U[:, :3]  # K's read side faces the residual stream
        print(f"block {block} K: top singular values {[round(s, 2) for s in S[:3].tolist()]}")
        for i in range(3):
            j = cos[:, i].abs().argmax().item()
            print(f"   vector {i}: most aligned action output {actions.labels[j]!r} (cos {cos[j, i]:+.3f})")

    inputs = dict(states=torch.zeros(1, 1, model.state_dim), actions=torch.zeros(1, 1, model.act_dim),
                  returns_to_go=torch.ones(1, 1, 1), timesteps=torch.zeros(1, 1, dtype=torch.long),
                  attention_mask=torch.ones(1, 1, dtype=torch.long))
    with torch.no_grad():
        before = model.model(**inputs).action_preds[0, -1]
        with surgery.patch(model, block=1, weight="K", idx=0):  # the study's edit: 1/d_model constant
            during = model.model(**inputs).action_preds[0, -1]
        after = model.model(**inputs).action_preds[0, -1]
    print(f"\naction before patch {before.numpy().round(4)}\n       inside patch {during.numpy().round(4)}"
          f"\n        after patch {after.numpy().round(4)} (restored exactly: {torch.equal(before, after)})")


if __name__ == "__main__":
    main()

"""The core: exact and fast decompositions of each weight, and reversible low-rank patches of them."""

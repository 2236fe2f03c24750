"""Analysis: singular vectors against embeddings, chance laws, localisation, tidy tables and reports."""

"""Language models: full-size scans, token tables and coherence, comparisons across widths."""

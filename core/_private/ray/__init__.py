"""Ray: the same API carried out by Ray Core, for clusters (the `ray` extra)."""

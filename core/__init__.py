"""core: an object store and task runtime with Ray Core's API (see DESIGN.md)."""

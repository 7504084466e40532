"""Objects: how values are stored and moved, with no knowledge of tasks or processes.

Owns serialization (pickle 5 with out-of-band buffers), shared-memory segments, the store that
decides where each object lives (inline, shared, spilled), spilling to a folder or a smart_open
URI, and the text of `core.memory_summary()`.
"""

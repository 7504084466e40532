"""Objects: how values are stored and moved, with no knowledge of tasks or processes.

    serialization.py   values <-> bytes: pickle 5, out-of-band buffers laid out for zero-copy
    untouched.py       which pages of a buffer were never written (skipped when copying zeros)
    shm.py             /dev/shm segments, mappings, pinned views, session manifests, cleanup
    segments.py        the segment pool: size classes, reuse, the count of touched bytes
    table.py           the object table: each object's tier (inline/shared/spilled), pins, release
    spiller.py         which objects to spill (a pure choice), the spill/restore I/O, spill files
    spill.py           spill targets by URL scheme (a local folder, S3) and the `spill=` config
    store.py           ObjectStore: the lock, put/get/locate/create/seal/delete, the capacity
                       rule and the moves between tiers (built one way: ObjectStore(...))
    inherited.py       the store's inherited objects (core.build): values that live in the zygote
                       and its later forks, copied into a segment once when someone needs it
    memory_summary.py  the text of `core.memory_summary()`

Sizes given by users are read by `core.units.parse_size`. Nothing here imports from tasks/,
local/ or ray/; numpy, torch, smart_open and boto3 are imported where first needed.
"""

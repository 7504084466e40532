"""Local: the engine on one machine; carries out what `tasks` decides.

    engine.py        LocalEngine: the Runtime of a local session, a thin front (one lock)
    carrier.py       the I/O layer: carries out the decisions' instructions
    inbox.py         worker messages and deaths, applied (the io thread's side)
    requests.py      workers' nested core calls (get, wait, create, cancel, kill, ...)
    readiness.py     get and wait blocking until their objects are ready
    object_table.py  reference counts, sealing and failing objects, lineage rebuilds
    worker_pool.py   worker processes, their sockets, the io thread
    zygote.py        the process that imports once and forks the workers
    zygote_imports.py the zygote's imports, in a helper thread
    zygote_builds.py the zygote's side of core.build (values its forks inherit)
    builder.py       the driver's side of core.build
    process.py       what a worker or zygote sets up about itself (death with parent, cancel)
    worker.py        the worker process's loop and its runtime (WorkerClient)
    held_results.py  the worker's thread that sends batched results when a long task follows
    messages.py      every message kind as a NamedTuple; protocol.py: framing and Channel
"""

"""Ray: the same `core` API carried out by Ray Core, for clusters (the `ray` extra).

Chosen by `core.init(address=...)`. This subpackage owns everything that knows Ray:

    config.py   our init options and `spill=` in Ray's words (`ray.init` kwargs, spilling config),
                Ray's resources in ours; the one place `ray` is imported (lazily)
    backend.py  RayBackend, the driver's runtime: starts or reaches Ray, owns the session
                (temp folder, shutdown) and the driver-only calls (free, resources, memory summary)
    client.py   RayClient: objects, tasks, actors and streams on one Ray connection, held by the
                driver's runtime and by a worker's alike
    table.py    RefTable: one Ray ref per object id, counted by our refs in this process
    worker.py   what runs inside Ray workers (task entries, the actor host), the worker's runtime
                (RayWorkerRuntime, attached lazily) and the pickling of our refs and handles
    errors.py   Ray's exceptions translated to ours at the boundary

Importing this package (or `core`) never imports `ray`.
"""

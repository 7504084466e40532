"""Tasks: the decisions of the local runtime, as functions over plain state. No I/O here.

    state.py        the records (Task, Obj, Actor, Stream) and their states as Literals
    transitions.py  the task life cycle as one table (start, finish) -> handler; the instructions
                    (Dispatch, Spawn, Reclaim, Reply, Fail, Interrupt, StopWorker, KillWorker)
    board.py        Board, the engine's whole state, and the decisions on submit, DONE, a
                    worker's death, cancel and nested gets
    scheduler.py    plan: which tasks go to which worker now (batches, spawns, pipelining);
                    admit: may a task whose arguments are spilled be sent now
    actors.py       actors: create, start, restart, death, kill
    retry.py        retry_decision (every retry path) and rebuild_decision (lineage)
    resources.py    ResourceLedger: acquire/release with invariants, GPU ids; workers' shares
    timeline.py     what the engine records as tasks run (a bounded Recorder), and its Chrome trace

Nothing here starts a process, touches a socket or the object store: decisions change the
records they are handed and return instructions that `local.carrier` carries out.
"""

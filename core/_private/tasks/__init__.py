"""Tasks: the decisions of the runtime, as pure functions over plain state.

Owns what a task and an object are (their life cycles), which worker runs what next
(`scheduler`), who holds which resources (`resources`), and the rules for retries and
admission. Nothing here starts a process or touches a socket: the local engine carries out
what these functions decide.
"""

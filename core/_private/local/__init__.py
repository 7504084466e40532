"""Local: the engine on one machine — the driver's front, its worker processes, their zygote,
the worker's own loop, and the wire protocol between them. Carries out what `tasks` decides.
"""

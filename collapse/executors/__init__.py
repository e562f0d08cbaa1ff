"""Backends that run a list of stages: `local` (subprocesses here) and `slurm` (submitit arrays), each
with `execute(Launched)` (base.py: the one interface; warm.py: the local one's warm starts).

Which one a launch uses is decided below them, in collapse/cluster.py (the grid needs it too).
"""

"""Backends that run a list of stages: `local` (subprocesses here) and `slurm` (submitit arrays).

Which one a launch uses is decided below them, in collapse/cluster.py (the grid needs it too).
"""

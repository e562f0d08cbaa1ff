import os
import subprocess
from pathlib import Path

import pytest

from helpers import TINY  # noqa: E402  (the tiny VAE config on the local executor: tests/helpers.py)


@pytest.fixture
def tiny():
    return list(TINY)


# ---------------------------------------------------------------- never a site's scheduler

OWN_CLUSTER_MARKER = "# Written by collapse slurm/start.sh"


def foreign_slurm() -> str | None:
    """Why the SLURM that answers here is not the project's own local cluster (slurm/start.sh), or None
    (it is ours, or none answers). Ours: the slurm.conf the controller runs with carries start.sh's marker."""
    from collapse.cluster import OFF_ENV, slurm_reachable
    if os.environ.get(OFF_ENV, "").lower() == "off" or not slurm_reachable():
        return None
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20).stdout
    conf = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    conf = {k.strip(): v.strip() for k, v in conf.items()}
    path = conf.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    try:
        ours = OWN_CLUSTER_MARKER in Path(path).read_text(errors="replace")
    except OSError:
        ours = False
    return None if ours else (f"the SLURM here (cluster {conf.get('ClusterName', '?')}, {path}) is not the project's "
                              "own local cluster: tests submit nothing to it (start ours with `bash slurm/start.sh` "
                              "on a throwaway machine)")


def pytest_sessionstart(session):
    """On a cluster login node: SLURM off for the tests and every process they start (auto -> local)."""
    why = foreign_slurm()
    if why:
        from collapse.cluster import OFF_ENV
        os.environ[OFF_ENV] = "off"
        session.config._collapse_no_slurm = why


# ---------------------------------------------------------------- two test workers (make test: pytest -n 2)

def pytest_configure(config):
    """Under pytest-xdist, pin each worker to its share of the cores: the local executor sizes its
    stages by this process's affinity (collapse/executors/local.py available_cores), so two workers
    never run more torch threads than there are cores (oversubscribed, torch runs several times slower)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    mine = cores[int(worker.removeprefix("gw")) % count::count] or cores
    os.sched_setaffinity(0, mine)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(len(mine))
    import torch
    torch.set_num_threads(len(mine))


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """--dist loadgroup: the tests using the one local SLURM cluster run on one worker, one after the
    other (some count its queue); the other tests of a file stay together, so its shared fixtures run once.
    A file whose SLURM test shares a module fixture with its other tests says ONE_WORKER_WITH_SLURM = True:
    all its tests then run on the SLURM worker, so that fixture is made once, not once on each worker.
    Every SLURM test is also `slow` (real jobs through a real scheduler): make check (-m "not slow") skips them."""
    why = getattr(config, "_collapse_no_slurm", None)
    for item in items:
        if item.get_closest_marker("slurm") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
        if why and item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.skip(reason=why))
        with_slurm = getattr(getattr(item, "module", None), "ONE_WORKER_WITH_SLURM", False)
        group = "slurm" if item.get_closest_marker("slurm") or with_slurm else item.path.name
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session):
    """--dist loadgroup groups by a suffix xdist adds to each test's id; where that suffix does not take
    (pytest 9.2: pytest-xdist#1386) the groups are silently ignored, a file's module fixtures run on both
    workers and SLURM tests run at once. Stop the run rather than let it pass slowly and flakily."""
    if not getattr(session.config.option, "loadgroup", False):   # set on each worker by --dist loadgroup
        return
    if any("@" in getattr(item, "_nodeid", "") and "@" not in item.nodeid for item in session.items):
        raise pytest.UsageError(f"pytest {pytest.__version__} ignores --dist loadgroup's groups "
                                "(pytest-xdist#1386): install setup.cfg's pytest<9.2 (make setup)")

"""The one interface both backends implement: `execute(launched: Launched) -> exit code`.

collapse/launch.py checks everything, writes the code snapshot, the stage specs and the sweep record, and
hands the backend a Launched: the sweep, its plan, the stages to run, where, from which code, and the key
of the sweep record it wrote. `local.execute` runs the stages here and returns when they have ended
(0: all done); `slurm.execute` submits them and returns at once (0: submitted).
"""
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from collapse import manifest
from collapse.config import REPO
from collapse.snapshot import Snapshot, job_env
from collapse.stages import RAN_TO_THE_END


@dataclass(frozen=True)
class Launched:
    sweep: object           # collapse/grid.py Sweep
    plan: object            # collapse/plan.py Plan
    todo: list              # its stages to run (not done, or redone)
    root: Path
    code: Snapshot | None   # the snapshot the stages import (None: this checkout)
    sweep_key: str          # the sweep record the launch wrote
    canary: bool = True     # SLURM: the first level waits for a canary job
    out: object = field(default=sys.stdout)


def report_files(root: Path, plan) -> str:
    """The files the sweep's report stage wrote, as its record lists them."""
    stage = next(s for s in plan.stages.values() if s.kind == "report")
    record = manifest.read(root, stage.key) or {}
    files = [str(root / f) for f in (record.get("metrics") or {}).get("files", [])]
    return ", ".join(files) if files else f"none ({record.get('status', 'not run')}: see {root / record.get('log', 'logs')})"


def digest(root: Path, plan) -> str:
    """The report stage's digest.txt (collapse/report/digest.py) when that stage ran to its end, else ''."""
    stage = next(s for s in plan.stages.values() if s.kind == "report")
    path = root / "report" / "digest.txt"
    ran = (manifest.read(root, stage.key) or {}).get("status") in RAN_TO_THE_END
    return path.read_text(errors="replace") if ran and path.is_file() else ""


def stage_env(code: Snapshot | None, extra: dict) -> tuple[dict, Path]:
    """A stage process's environment and working folder: this one's, imports from the snapshot (or this
    checkout), no rank variables (each stage forms its own process group)."""
    env = {**os.environ, **extra}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    if code is None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        return env, REPO
    return job_env(code, env), code.path

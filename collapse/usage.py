"""`--help` of the sweeps/ commands, answered without importing torch (or anything heavy): the grids
with their one-line descriptions, the profiles, the clusters and the keys a launch takes itself."""
from pathlib import Path

from collapse.config import config_dirs
from collapse.grid import grid_dirs

HELP_FLAGS = ("-h", "--help", "help")
MORE = ("More: README.md (quick start), docs/usage.md (every key), docs/cluster.md (SLURM, GPUs), "
        "docs/offline.md (data and weights), docs/results/ (measured runs).")


def first_comment(path: Path) -> str:
    """A config file's one-line description: its `description:` key, else its first comment line."""
    description = ""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("description:"):
            return line.split(":", 1)[1].strip().strip("\"'")
        if line.startswith("#") and not description:
            description = line.lstrip("# ").strip()
    return description


def named(folders: list[Path]) -> list[tuple[str, str]]:
    seen = {}
    for folder in folders:
        for path in sorted(folder.glob("*.yaml")):
            seen.setdefault(path.stem, first_comment(path))
    return sorted(seen.items())


def listing(title: str, items: list[tuple[str, str]]) -> list[str]:
    width = max((len(name) for name, _ in items), default=0)
    return [title] + [f"  {name:<{width}}  {text[:100]}" for name, text in items]


def launch_help() -> str:
    lines = ["usage: python sweeps/launch.py grid=NAME [profile=NAME] [cluster=NAME] [key=value ...]",
             "",
             "Runs a grid's stages (teacher, synth, students, evals, report) on the local executor or SLURM;",
             "every key=value is an OmegaConf dotlist override of the experiment's config (train.epochs=5).",
             ""]
    lines += listing("grids (grid=, sweeps/grids/ and $COLLAPSE_GRID_DIR):", named(grid_dirs())) + [""]
    lines += listing("profiles (profile=, configs/profile/; smoke takes its sizes from the grid's task):",
                     named([d / "profile" for d in config_dirs()])) + [""]
    clusters = named([d / "cluster" for d in config_dirs()])
    lines += listing("clusters (cluster=, configs/cluster/):",
                     [("auto", "the default: slurm where sinfo answers, else local")] + clusters) + [""]
    lines += ["keys a launch takes itself:",
              "  results_root=DIR   where stages, records, logs and the report go (a filesystem the nodes share)",
              "  seeds=[0,1,2]      replicate every grid point (train.seed)",
              "  dry_run=true       print the plan, the sbatch calls, the estimate and warnings; write nothing",
              "  redo=KIND|PATTERN  rerun those stages although done, and what reads them ('redo=student[lam=0.5*')",
              "  rates=FILE         estimate GPU stages from the rates bench/gpu_check.sh measured (default: stated)",
              "  canary=false       SLURM: no canary job first (default true: a 10-minute check of imports, GPUs, paths)",
              "  notify=ADDRESS     SLURM: mail ADDRESS when the report job ends (the sweep's end) and when a stage fails",
              "  show=config        print the composed config (profile, cluster, grid and command-line overrides),",
              "                     each row's keys and the seeds, as YAML; reads no data, runs nothing",
              "", MORE]
    return "\n".join(lines)


def status_help(usage: str) -> str:
    lines = [f"usage: python sweeps/status.py {usage}",
             "",
             "One row per stage of each grid's latest sweep (of grid=NAME alone): its state, SLURM job, elapsed time,",
             "log or reason; a running stage also shows its progress (step of steps, epoch of epochs, items made),",
             "its latest test metric and the time to go at its own rate so far.",
             "",
             "  watch=true, --watch  redraw the table every `every` seconds (every=30) until every stage has ended;",
             "                       exits 1 when a stage failed, else 0",
             "  log=NAME             the last `lines` lines (lines=40) of a stage's log; NAME: its name as the table",
             "                       shows it ('student[lam=0.5,beta=1,gamma=1,seed=0]'), a unique prefix, or its key",
             "  log=NAME watch=true  follow that log (like tail -f) until the stage ends",
             "", MORE]
    return "\n".join(lines)


def short_help(command: str, usage: str) -> str:
    return f"usage: python sweeps/{command} {usage}\n\n{MORE}"

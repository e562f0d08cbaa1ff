"""Grids: short declarative files in sweeps/grids/ expanded into configured points.

    experiment: vae_mnist            # configs/experiment/<name>.yaml
    description: ...
    seeds: [0, 1, 2]                 # optional; each seed is a whole replicate (train.seed)
    overrides: {train.epochs: 70}    # optional, applied to every point
    rows:                            # explicit points ...
      - {distill.lam: 0.0, distill.beta: 0.0, distill.gamma: 0.0}
    axes:                            # ... and/or a cartesian product
      distill.lam: [0.1, 1.0]

The command line selects `grid=`, `profile=` and `cluster=` by name and overrides any other key.
`profile=smoke` is configs/profile/smoke.yaml with the grid's task's own SMOKE sizes over it, so one
name serves every grid (a DDPM and a VAE need different sizes to run in minutes).
"""
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from collapse import tasks
from collapse.config import TREE, ConfigError, ExperimentConfig, bad, load_yaml, merge, named_yaml, parse_dotlist
from collapse.cluster import cluster_file
from collapse.experiment import from_dict

GRID_DIR = TREE / "sweeps" / "grids"
GRID_KEYS = ("experiment", "description", "seeds", "overrides", "rows", "rows_from", "axes")
SELECTORS = ("grid", "profile", "cluster")
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
SIZED_BY_TASK = "smoke"   # the profile whose sizes each task states (its SMOKE)


@dataclass
class Point:
    label: dict              # the keys this point sets, e.g. {"distill.lam": 0.5, "train.seed": 0}
    config: ExperimentConfig


@dataclass
class Sweep:
    grid: str
    base: ExperimentConfig
    points: list[Point]
    argv: list[str]
    cluster: str = "local"   # the configs/cluster/ file it loaded (cluster=auto resolved)


def grid_dirs() -> list[Path]:
    """sweeps/grids/, then any folders in $COLLAPSE_GRID_DIR (os.pathsep-separated) for private grids."""
    extra = [Path(p) for p in os.environ.get("COLLAPSE_GRID_DIR", "").split(os.pathsep) if p]
    return [GRID_DIR, *extra]


def grid_names() -> list[str]:
    return sorted({p.stem for d in grid_dirs() for p in d.glob("*.yaml")})


def grid_path(name: str) -> Path:
    """A grid by name (sweeps/grids/, $COLLAPSE_GRID_DIR), or a grid file given as a path ending in .yaml."""
    if isinstance(name, str) and NAME.match(name):
        for d in grid_dirs():
            if (d / f"{name}.yaml").is_file():
                return d / f"{name}.yaml"
    if isinstance(name, str) and name.endswith(".yaml") and Path(name).is_file():
        return Path(name)
    raise bad("grid", name, "one of: " + ", ".join(grid_names()) + " (or a path to a grid file, *.yaml)")


def grid_name_of(grid: str) -> str:
    """What a grid is called in stage names, records and report files: a grid file's stem when grid= is a path."""
    return Path(grid).stem if grid.endswith(".yaml") else grid


def load_grid(name: str, seen: tuple = ()) -> dict:
    """A grid file, checked; `rows_from: OTHER` takes OTHER's rows (a paper grid at full size reuses the
    rows of its stand-in grid rather than copying them)."""
    grid = load_yaml(grid_path(name), "grid")
    for key in grid:
        if key not in GRID_KEYS:
            raise ConfigError(f"grid '{name}': unknown key '{key}'; allowed: {', '.join(GRID_KEYS)}")
    if "rows_from" in grid:
        other = grid.pop("rows_from")
        if "rows" in grid:
            raise in_grid(name, bad("grid.rows_from", other, "no rows_from beside rows (one or the other)"))
        if not isinstance(other, str) or other in seen + (name,):
            raise in_grid(name, bad("grid.rows_from", other, "the name of another grid, not one that leads back here"))
        grid["rows"] = load_grid(other, seen + (name,)).get("rows") or []
    if "experiment" not in grid:
        raise ConfigError(f"grid '{name}': missing key 'experiment'")
    for key in ("rows",):
        if key in grid and (not isinstance(grid[key], list) or not all(isinstance(r, dict) for r in grid[key])):
            raise in_grid(name, bad(f"grid.{key}", grid[key], "a list of mappings from dotted keys to values"))
    if "axes" in grid and (not isinstance(grid["axes"], dict)
                           or not all(isinstance(v, list) and v for v in grid["axes"].values())):
        raise in_grid(name, bad("grid.axes", grid["axes"], "a mapping from dotted keys to non-empty lists"))
    if grid.get("overrides") is not None and not isinstance(grid["overrides"], dict):
        raise in_grid(name, bad("grid.overrides", grid["overrides"], "a mapping from dotted keys to values"))
    return grid


def in_grid(name: str, error: Exception) -> ConfigError:
    """An error caused by a grid file's contents, saying which file."""
    return ConfigError(f"grid '{name}' ({grid_path(name)}): {error}")


def dotted(d: dict) -> dict:
    """{'a.b': 1} or {'a': {'b': 1}} -> nested dict."""
    return parse_dotlist([f"{k}={_yaml(v)}" for k, v in d.items()]) if d else {}


def _yaml(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def split_argv(argv: list[str]) -> tuple[dict, list[str]]:
    """Pull the name selectors (grid=, profile=, cluster=<name>) out of the overrides."""
    selected, rest = {}, []
    for item in argv:
        key, _, value = item.partition("=")
        if key in SELECTORS and "=" in item:
            selected[key] = value
        else:
            rest.append(item)
    return selected, rest


def profile_layer(name: str, task: str) -> dict:
    """configs/profile/<name>.yaml, its `tasks: {<task>: ...}` section over the rest (a profile for grids of
    several tasks: rehearsal); for profile=smoke, the task's SMOKE sizes over it (an unknown task is left
    for the config's own check to name)."""
    layer = named_yaml("profile", name)
    per_task = layer.pop("tasks", None) or {}
    if not isinstance(per_task, dict) or not all(isinstance(v, dict) for v in per_task.values()):
        raise bad(f"profile '{name}': tasks", per_task, "a mapping from task names to config sections")
    layer = merge(layer, per_task.get(task) or {})
    if name == SIZED_BY_TASK and task in tasks.names():
        layer = merge(layer, dotted(tasks.get(task).SMOKE))
    return layer


def compose(argv: list[str]) -> tuple[str, dict, list[dict], dict, object, str]:
    """The layers a grid's base config merges, unchecked: (grid name, the grid file, [experiment,
    profile?, cluster, grid overrides, command line], the command line, its seeds= or None, the cluster
    file's name)."""
    selected, rest = split_argv(argv)
    if "grid" not in selected:
        raise ConfigError("missing grid=NAME; available grids: " + ", ".join(grid_names()))
    grid_name = selected["grid"]
    grid = load_grid(grid_name)
    cli = parse_dotlist(rest)
    seeds = cli.pop("seeds", None)
    try:
        layers = [named_yaml("experiment", grid["experiment"])]
    except ConfigError as e:
        raise in_grid(grid_name, e) from None
    if "profile" in selected:
        layers.append(profile_layer(selected["profile"], merge(layers[0], cli).get("task", tasks.DEFAULT)))
    cluster = selected.get("cluster", "auto")
    if cluster != "auto":
        named_yaml("cluster", cluster)    # an unknown name fails as itself, not as what auto would pick
    cluster = cluster_file(cluster)
    layers.append({"cluster": named_yaml("cluster", cluster)})
    try:
        layers.append(dotted(grid.get("overrides") or {}))
    except ConfigError as e:
        raise in_grid(grid_name, e) from None
    layers.append(cli)
    return grid_name, grid, layers, cli, seeds, cluster


def grid_labels(grid: dict) -> list[dict]:
    """The keys each grid point sets: every row, crossed with every combination of the axes."""
    axes = grid.get("axes") or {}
    return [{**row, **dict(zip(axes, combo))}
            for row in list(grid.get("rows") or [{}]) for combo in itertools.product(*axes.values())]


def load_sweep(argv: list[str], paths: bool = True) -> Sweep:
    """The grid named in argv composed with its profile, cluster, overrides and the command line, checked.
    paths=False: paths stay as given (relative ones are not resolved against the working directory)."""
    grid_name, grid, layers, cli, seeds, cluster = compose(argv)
    base_dict = merge(*layers)
    try:
        base = from_dict(base_dict, paths=paths)
    except ConfigError as e:
        # whose mistake: the command line's, or (when the error stays without it) the grid's overrides'
        if _fails(merge(*layers[:-1]), e) and not _fails(merge(*layers[:-2]), e):
            raise in_grid(grid_name, e) from None
        raise

    seeds_from_grid = seeds is None and "seed" not in cli.get("train", {}) and "seeds" in grid
    if seeds is None:
        seeds = [base.train.seed] if "seed" in cli.get("train", {}) else grid.get("seeds", [base.train.seed])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        error = bad("seeds", seeds, "a non-empty list of integers >= 0")
        raise in_grid(grid_name, error) if seeds_from_grid else error

    points = []
    for label in grid_labels(grid):
        for seed in seeds:
            point_label = {**label, "train.seed": seed}
            # the command line wins over the grid's own values, except the keys this grid sweeps
            try:
                config = from_dict(merge(base_dict, dotted(point_label)), paths=paths)
            except ConfigError as e:
                raise in_grid(grid_name, f"point {point_label}: {e}") from None
            points.append(Point(point_label, config))
    return Sweep(grid_name_of(grid_name), base, points, list(argv), cluster)


def _fails(data: dict, error: ConfigError) -> bool:
    try:
        from_dict(data)
    except ConfigError as e:
        return str(e) == str(error)
    return False

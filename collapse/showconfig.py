"""`show=config` of a launch: the config a grid composes, printed as YAML, with nothing run or checked
beyond the config itself (no data, weights or results root are looked at)."""
import yaml

from collapse.config import ConfigError, merge, to_dict
from collapse.grid import Sweep, compose, grid_labels, load_sweep
from collapse.plan import point_name

SHOWABLE = ("config",)   # the values show= takes


def rows_and_seeds(sweep: Sweep) -> tuple[list[dict], list[int]]:
    """The grid's rows (the keys each sets over the base, seed aside) and its seeds, in launch order."""
    rows, seeds = [], []
    for point in sweep.points:
        keys = {k: v for k, v in point.label.items() if k != "train.seed"}
        if keys not in rows:
            rows.append(keys)
        if point.label["train.seed"] not in seeds:
            seeds.append(point.label["train.seed"])
    return rows, seeds


def composed(sweep: Sweep) -> str:
    """YAML: the base config (the experiment, then the profile, the cluster file, the grid's overrides and
    the command line), each row's label (as in its stage names) and keys, and the seeds."""
    rows, seeds = rows_and_seeds(sweep)
    heading = (f"# grid {sweep.grid} ({len(sweep.points)} points): the base config, then each row's keys over it, "
               "once per seed\n")
    base = {"grid": sweep.grid, "cluster": sweep.cluster, "config": to_dict(sweep.base)}
    points = {"rows": [{"label": point_name(keys) or "base", "set": keys} for keys in rows], "seeds": seeds}
    return as_yaml(heading, base, points)


def as_yaml(heading: str, base: dict, points: dict) -> str:
    # the config block by block; the rows' keys and the seeds one line each
    return (heading + yaml.safe_dump(base, sort_keys=False, width=120)
            + yaml.safe_dump(points, sort_keys=False, default_flow_style=None, width=120))


def show(argv: list[str]) -> str:
    """The composed config, checked as a launch checks it, paths left as given; where a check fails
    (a path that is not on this machine, say), the layers as merged, unchecked, and the error."""
    try:
        return composed(load_sweep(argv, paths=False))
    except ConfigError as error:
        grid_name, grid, layers, cli, seeds, cluster = compose(argv)
        heading = (f"# grid {grid_name}: the config as the files and the command line compose it, NOT CHECKED\n"
                   f"# (fields left to their defaults are not shown); the launch would stop with:\n# error: {error}\n")
        base = {"grid": grid_name, "cluster": cluster, "config": merge(*layers)}
        points = {"rows": grid_labels(grid), "seeds": seeds if seeds is not None else grid.get("seeds", [0])}
        return as_yaml(heading, base, points)

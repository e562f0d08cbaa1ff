"""`show=config` of a launch: the config a grid composes, printed as YAML, with nothing run or checked
beyond the config itself (no data, weights or results root are looked at)."""
import yaml

from collapse.config import to_dict
from collapse.grid import Sweep
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
    # the config block by block; the rows' keys and the seeds one line each
    return (heading + yaml.safe_dump(base, sort_keys=False, width=120)
            + yaml.safe_dump(points, sort_keys=False, default_flow_style=None, width=120))

"""Every stage record of one or more results roots as one table: collapse.results(root, ...) -> DataFrame.

One row per stage record (sweep records left out), per root: collapse.results("r/a", "r/b") stacks two
roots, a stage both ran once for each. Columns: the record's own fields (key, kind,
name, status, started, ended, seconds, host, git_commit, log, ...), `root` (the folder given) and `sweep`
(the grids whose launches planned the stage, comma-separated: a teacher two grids share names both;
None for a stage no sweep record lists), the flattened config
(`config.train.seed`, `config.distill.lam`), the stages it read (`deps.teacher`) and the scalar
metrics (`metrics.best_test_loss`), then what it ran with (`git_dirty`, `versions.torch`, ...,
`cuda.device` on a GPU). Lists in the config (e.g. `config.model.block_channels`) are
one column of JSON text, so that every column can be grouped on and round-trips through CSV;
lists in the metrics (`history`, the Gaussian's per-generation arrays) are left out: they stay in
the record, and the loss curves are in TensorBoard and the report's <grid>_curves.png.
"""
import importlib.util
import json
import sys
from pathlib import Path

FIELDS = ("key", "kind", "name", "status", "started", "ended", "seconds", "host", "user", "pid",
          "slurm_job_id", "git_commit", "git_dirty", "log", "error")


def results(*roots):
    """One pandas DataFrame of every stage record under <root>/manifest/ of each root, tagged with its
    root and sweep; sorted by root (in the order given), then start time and key."""
    import pandas as pd   # heavy: pandas only for the table, not to import collapse
    from collapse import manifest   # imports torch (via storage): not at `import collapse`
    if not roots:
        raise TypeError("results() needs at least one results root")
    rows = []
    for order, root in enumerate(roots):
        records = manifest.read_all(root)
        grids = sweeps_of(records)
        for r in records:
            if r.get("kind") != "sweep":
                rows.append({**record_row(r), "root": str(root), "sweep": grids.get(r.get("key")), "_order": order})
    frame = pd.DataFrame(rows, columns=_columns(rows) + ["_order"])
    frame = frame.sort_values(["_order", "started", "key"], na_position="last", ignore_index=True)
    return frame.drop(columns="_order")


def sweeps_of(records: list[dict]) -> dict:
    """{stage key: the grids (comma-separated, sorted) whose done sweep records list it}."""
    grids: dict = {}
    for r in records:
        if r.get("kind") == "sweep" and r.get("status") == "done":
            for key in (r.get("config") or {}).get("stages") or ():
                grids.setdefault(key, set()).add(str(r.get("name")))
    return {key: ",".join(sorted(names)) for key, names in grids.items()}


def record_row(record: dict) -> dict:
    row = {f: record.get(f) for f in FIELDS}
    if isinstance(record.get("started"), (int, float)) and isinstance(record.get("ended"), (int, float)):
        row["seconds"] = round(record["ended"] - record["started"], 3)
    row.update(_flatten(record.get("config"), "config", lists="json"))
    row.update(_flatten(record.get("deps"), "deps", lists="json"))
    row.update(_flatten(record.get("metrics"), "metrics", lists="drop"))
    row.update(_flatten(record.get("versions"), "versions", lists="drop"))
    row.update(_flatten(record.get("cuda"), "cuda", lists="drop"))
    return row


def _flatten(value, prefix: str, lists: str) -> dict:
    """{"a": {"b": 1}} -> {"<prefix>.a.b": 1}; a list becomes JSON text (lists="json") or is dropped."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}", lists))
        return out
    if isinstance(value, (list, tuple)):
        return {prefix: json.dumps(value, default=str)} if lists == "json" else {}
    return {prefix: value}


def _columns(rows: list[dict]) -> list[str]:
    """The record's fields first, root and sweep, then config.*, deps.*, metrics.*, versions.*, cuda.*, each group sorted."""
    seen = {c for row in rows for c in row}
    groups = [sorted(c for c in seen if c.startswith(p)) for p in ("config.", "deps.", "metrics.", "versions.", "cuda.")]
    return list(FIELDS) + ["root", "sweep"] + [c for group in groups for c in group]


def write_table(results_root, out: Path) -> list[Path]:
    """out/results.csv, and out/results.parquet when pyarrow is installed."""
    from collapse import storage   # torch-free: storage imports torch, and `import collapse` must not
    frame = results(results_root)
    written = [storage.atomic_write(Path(out) / "results.csv", lambda tmp: frame.to_csv(tmp, index=False))]
    if importlib.util.find_spec("pyarrow") is not None:
        try:
            written.append(storage.atomic_write(Path(out) / "results.parquet",
                                                lambda tmp: frame.to_parquet(tmp, index=False)))
        except (ValueError, TypeError) as e:   # a column pyarrow cannot type (mixed values): the csv stands
            print(f"warning: report: results.parquet not written: {e}", file=sys.stderr)
    return written

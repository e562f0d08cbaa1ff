"""Replay a results root's records into another tool, offline: python sweeps/export.py results_root=DIR
to=mlflow|tensorboard|wandb [out=DIR] [project=NAME]. out defaults to <results_root>/export/<to>;
project is the W&B project the offline runs sync into (default collapse). collapse/export.py says what
each run holds; the libraries are the extra `export`: pip install '.[export]'."""
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collapse.export import PACKAGES, TARGETS  # noqa: E402

USAGE = f"results_root=DIR to={'|'.join(TARGETS)} [out=DIR] [project=NAME]"
KEYS = ("results_root", "to", "out", "project")


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = [a for a in argv if "=" not in a or a.split("=", 1)[0] not in KEYS]
    if unknown or "results_root" not in args or "to" not in args:
        print(f"error: expected {USAGE}, got {argv}", file=sys.stderr)
        return 2
    root, to = Path(args["results_root"]), args["to"]
    if to not in TARGETS:
        print(f"error: key 'to': value '{to}' is not allowed; expected one of {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    if not (root / "manifest").is_dir():
        print(f"error: key 'results_root': value '{root}' has no manifest/ (nothing launched there yet)",
              file=sys.stderr)
        return 2
    if importlib.util.find_spec(to) is None:
        print(f"error: key 'to': value '{to}' needs the {to} package, not installed here: "
              f"pip install '.[export]' (or pip install {PACKAGES[to]})", file=sys.stderr)
        return 2
    from collapse.export import export   # heavy: the target's library (and manifest's torch) only now
    out = Path(args.get("out") or root / "export" / to)
    runs = export(root, to, out, args.get("project") or "collapse")
    grids = sorted({r["grid"] for r in runs})
    print(f"{len(runs)} runs of {len(grids)} grids ({', '.join(grids) or 'none'}) exported to {to} in {out}")
    print({"mlflow": f"view: mlflow ui --backend-store-uri {out.resolve().as_uri()}",
           "tensorboard": f"view: tensorboard --logdir {out}",
           "wandb": f"upload from a machine with internet: wandb sync {out}/wandb/offline-run-*"}[to])
    return 0


if __name__ == "__main__":
    if set(sys.argv[1:]) & {"-h", "--help", "help"}:
        from collapse.usage import short_help
        print(short_help("export.py", USAGE))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))

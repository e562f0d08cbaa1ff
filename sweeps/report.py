"""Write tables and plots for every grid in a results root, and every stage record as one table
(report/results.csv, .parquet with pyarrow): python sweeps/report.py results_root=DIR; with
report.metric=M (e.g. test_recon, or test_recon+0.1*test_kl) each grid's table and scorecard on M instead,
from the records already there (collapse/report/metric.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))



def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = [a for a in argv if "=" not in a or a.split("=", 1)[0] not in ("results_root", "report.metric")]
    if unknown or "results_root" not in args:
        print(f"error: expected results_root=DIR [report.metric=M], got {argv}", file=sys.stderr)
        return 2
    root = Path(args["results_root"])
    if not (root / "manifest").is_dir():
        print(f"error: key 'results_root': value '{root}' has no manifest/ (nothing launched there yet)",
              file=sys.stderr)
        return 2
    from collapse.config import ConfigError
    from collapse.reporting import write_reports   # heavy: the tasks' report parts load torch; --help does not
    try:
        written = write_reports(root, args.get("report.metric"))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    if set(sys.argv[1:]) & {"-h", "--help", "help"}:
        from collapse.usage import short_help
        print(short_help("report.py", "results_root=DIR"))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))

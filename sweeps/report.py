"""Write tables and plots for every grid in a results root, and every stage record as one table
(report/results.csv, .parquet with pyarrow): python sweeps/report.py results_root=DIR"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))



def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = [a for a in argv if "=" not in a or a.split("=", 1)[0] != "results_root"]
    if unknown or "results_root" not in args:
        print(f"error: expected results_root=DIR, got {argv}", file=sys.stderr)
        return 2
    root = Path(args["results_root"])
    if not (root / "manifest").is_dir():
        print(f"error: key 'results_root': value '{root}' has no manifest/ (nothing launched there yet)",
              file=sys.stderr)
        return 2
    from collapse.report.write import write_reports   # heavy: the tasks' report parts load torch; --help does not
    for path in write_reports(root):
        print(path)
    return 0


if __name__ == "__main__":
    if set(sys.argv[1:]) & {"-h", "--help", "help"}:
        from collapse.usage import short_help
        print(short_help("report.py", "results_root=DIR"))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))

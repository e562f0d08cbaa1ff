"""Two sweeps side by side: python sweeps/compare.py A B [metric=NAME]; A, B: a results root, ROOT:GRID or
ROOT:sweep-KEY. Stages reused, changed (the config keys that differ) and only in one; per row the primary
metric's B - A, paired over seeds; which rows share their teacher and synthetic set (collapse/compare.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if __name__ == "__main__":
    if set(sys.argv[1:]) & {"-h", "--help", "help"}:   # answered before anything heavy is imported
        from collapse.usage import short_help
        print(short_help("compare.py", "A B [metric=NAME]   (A, B: a results root, or ROOT:GRID, or ROOT:sweep-KEY)"))
        sys.exit(0)
    from collapse.compare import main
    sys.exit(main(sys.argv[1:]))

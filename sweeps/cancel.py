"""Cancel a sweep's SLURM jobs: python sweeps/cancel.py results_root=DIR [grid=NAME | STAGE-NAME-PATTERN ...]"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collapse.cancel import main  # noqa: E402

if __name__ == "__main__":
    if set(sys.argv[1:]) & {"-h", "--help", "help"}:
        from collapse.usage import short_help
        print(short_help("cancel.py", "results_root=DIR [grid=NAME | STAGE-NAME-PATTERN ...]"))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))

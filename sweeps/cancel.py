"""Cancel a sweep's SLURM jobs: python sweeps/cancel.py results_root=DIR [grid=NAME | STAGE-NAME-PATTERN ...]"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collapse.cancel import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The state of a sweep's stages, live, and a stage's log: python sweeps/status.py results_root=DIR [grid=NAME]
[watch=true] [every=SECONDS] [log=NAME] [lines=N]"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collapse.status_live import USAGE, main  # noqa: E402

if __name__ == "__main__":
    if set(sys.argv[1:]) & {"-h", "--help", "help"}:
        from collapse.usage import status_help
        print(status_help(USAGE))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))

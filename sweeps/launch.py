"""Launch a sweep: python sweeps/launch.py grid=vae_coeffs [profile=smoke] [cluster=local] [key=value ...]"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collapse.launch import launch  # noqa: E402

if __name__ == "__main__":
    sys.exit(launch(sys.argv[1:]))

"""Launch a sweep: python sweeps/launch.py grid=vae_coeffs [profile=smoke] [cluster=local] [key=value ...]"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if __name__ == "__main__":
    if set(sys.argv[1:]) & {"-h", "--help", "help"}:   # answered before anything heavy is imported
        from collapse.usage import launch_help
        print(launch_help())
        sys.exit(0)
    from collapse.launch import launch
    sys.exit(launch(sys.argv[1:]))

"""How long a `status`-style read of a results root takes: N realistic records, read back whole.

Writes N manifest records (a trained stage's record with 70 epochs of history, ~6 KB) into a
temporary results root, then times, median of --rounds:
  read_all        manifest.read_all: list, open, parse and check every record
  status summary  read_all + counting stages by kind and status (what a status line needs)
  status.collect  collapse.status.collect with SLURM queries stubbed out, when that module exists
  results         collapse.results: every record as one pandas DataFrame (goal: < 2 s at 10,000)
Run: python bench/manifest_load.py [--records 1000 --rounds 7]
"""
import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collapse import manifest  # noqa: E402


def make_records(root: Path, n: int) -> None:
    history = [{"epoch": e, "step": 235 * e, "train_loss": 100.0 + e, "test_loss": 99.0 + e, "seconds": 1.0 * e}
               for e in range(70)]
    kinds = ("teacher", "synth", "student", "eval")
    for i in range(n):
        status = ("done", "done", "done", "failed", "running")[i % 5]
        manifest.write(root, {"kind": kinds[i % 4], "key": f"{i:016x}", "name": f"stage[{i}]", "status": status,
                              "deps": {"teacher": "0" * 16}, "config": {"train": {"epochs": 70, "seed": i}},
                              "metrics": {"best_test_loss": 99.0, "history": history}, "log": f"logs/{i}.log"})


def timed(fn, rounds: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_records(root, args.records)
        write_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in manifest.folder(root).iterdir())
        print(f"{args.records} records, {size / 1e6:.1f} MB, written in {write_s:.2f}s "
              f"({1e3 * write_s / args.records:.2f} ms each, fsync included)")

        t, records = timed(lambda: manifest.read_all(root), args.rounds)
        assert len(records) == args.records
        print(f"read_all        {1e3 * t:8.1f} ms  ({1e6 * t / args.records:.0f} us/record)")

        t, counts = timed(lambda: collections.Counter((r.get("kind"), r["status"]) for r in manifest.read_all(root)),
                          args.rounds)
        print(f"status summary  {1e3 * t:8.1f} ms  {dict(sorted(counts.items()))}")

        from collapse.results import results
        t, frame = timed(lambda: results(root), args.rounds)
        assert len(frame) == args.records
        print(f"results         {1e3 * t:8.1f} ms  ({frame.shape[0]} rows x {frame.shape[1]} columns)")

        try:
            from collapse import status
            t, _ = timed(lambda: status.collect(root, squeue_fn=lambda ids: {}, sacct_fn=lambda ids: {}), args.rounds)
            print(f"status.collect  {1e3 * t:8.1f} ms  (SLURM queries stubbed)")
        except (ImportError, AttributeError, TypeError) as e:
            print(f"status.collect  skipped ({type(e).__name__}: {e})")


if __name__ == "__main__":
    main()

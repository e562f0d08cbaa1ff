"""Every shipped grid plans the stage keys it planned when tests/stage_keys.json was written: a refactor
that changed a key would silently retrain finished stages (and orphan every result on disk).

Paths a grid needs (CelebA, t5-small, GPT-2, CNN/DailyMail) are folders this test makes, each with a
FINGERPRINT file, so their keys depend on nothing of this machine. To record the keys anew after a
change that must change them: python tests/test_stage_keys.py > tests/stage_keys.json
"""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collapse import fingerprint  # noqa: E402
from collapse.grid import grid_names, load_sweep  # noqa: E402
from collapse.plan import build  # noqa: E402
from helpers import NEEDS, PATHS, folders  # noqa: E402

RECORDED = Path(__file__).with_name("stage_keys.json")


def planned_keys(base: Path) -> dict:
    """{grid: {stage name: key}} of every shipped grid, on the local cluster file."""
    made, keys = folders(base), {}
    fingerprint.cache_clear()
    for grid in grid_names():
        extra = [f"{PATHS[n]}={made[n]}" for n in NEEDS.get(grid, [])]
        plan = build(load_sweep([f"grid={grid}", "cluster=local", *extra]))
        keys[grid] = {s.name: s.key for s in plan.stages.values()}
    return keys


def test_every_shipped_grid_keeps_its_stage_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("COLLAPSE_GRID_DIR", raising=False)
    recorded = json.loads(RECORDED.read_text())
    now = planned_keys(tmp_path)
    for grid in sorted(set(recorded) & set(now)):
        changed = {n: (recorded[grid].get(n), k) for n, k in now[grid].items() if recorded[grid].get(n) != k}
        assert not changed, f"grid {grid}: stage keys changed: {changed}"
    assert set(recorded) <= set(now), f"grids gone: {set(recorded) - set(now)}"


if __name__ == "__main__":
    import tempfile
    print(json.dumps(planned_keys(Path(tempfile.mkdtemp())), indent=1, sort_keys=True))

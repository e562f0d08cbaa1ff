"""synth.shards: the synthetic set sampled by several stages (one SLURM array), each its own range of
items and seed, joined in shard order by the synth stage the students read. End to end: the tiny
DDPM grid on SLURM (tests/test_ddpm.py) and the tiny T5 grid (tests/test_t5.py) run with two shards."""
import pytest

from collapse import plan as planning
from collapse.executors.slurm_groups import make_groups
from collapse.grid import load_sweep
from collapse.kinds import shard_range, shard_seed

SMALL = ["profile=smoke", "cluster=local", "data.train_size=200", "data.test_size=64",
         "train.epochs=1", "eval.grid_samples=4", "model.hidden=32", "model.latent=4"]


def build(*extra, root="/tmp/unused"):
    return planning.build(load_sweep(["grid=vae_smoke3", *SMALL, f"results_root={root}", *extra]))


def by_kind(plan, kind):
    return [s for s in plan.stages.values() if s.kind == kind]


def test_one_shard_keeps_the_synth_stage_and_its_key_as_before():
    one = build()
    assert by_kind(one, "synth_shard") == [] and len(by_kind(one, "synth")) == 1
    (synth,) = by_kind(one, "synth")
    assert "shards" not in planning.key_material("synth", synth.config)["synth"]   # keys made before shards hold
    three = build("synth.shards=3")
    shards = by_kind(three, "synth_shard")
    assert [s.name for s in shards] == [f"synth[seed=0,shard={i}/3]" for i in range(3)]
    assert len({s.key for s in shards}) == 3 and [s.args for s in shards] == [{"shard": i} for i in range(3)]
    (joined,) = by_kind(three, "synth")
    assert joined.deps == {"teacher": by_kind(three, "teacher")[0].key, **{f"shard.{i}": s.key for i, s in enumerate(shards)}}
    assert joined.key != synth.key and all(st.deps["synth"] == joined.key for st in by_kind(three, "student"))


def test_shard_ranges_cover_every_item_once_and_seeds_differ():
    for n, k in ((200, 3), (7, 7), (60_000, 64)):
        ranges = [shard_range(n, k, i) for i in range(k)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert len({shard_seed(0, i) for i in range(k)}) == k
    with pytest.raises(Exception, match="key 'synth.shards'"):
        build("synth.shards=0")


def test_on_slurm_the_shards_are_one_array_after_the_teacher_and_the_join_waits_for_all():
    plan = build("synth.shards=4")
    groups = make_groups(list(plan.stages.values()))
    for i, g in enumerate(groups):
        g.job_id = str(100 + i)
    shape = [(g.level, g.kind, len(g.stages), g.dependency(groups)) for g in groups]
    assert shape[:3] == [(0, "teacher", 1, None), (1, "synth_shard", 4, "afterok:100"), (1, "eval", 1, "afterok:100")]
    assert shape[3] == (2, "synth", 1, "afterok:101")          # the whole shard array
    assert shape[-1][:3] == (5, "report", 1) and shape[-1][3] == "afterany:" + ":".join(g.job_id for g in groups[:-1])

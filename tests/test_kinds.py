"""The stage kinds (collapse/kinds.py): one class per kind states its key's sections, builds its deps for
the plan and reads them back when it runs. Here: a kind's sections are what decides its stages' keys in a
planned grid, the deps the plan writes are the ones the classes build, the toy modality's sharded grid runs
every kind on the inputs planned through its class, and an unknown kind fails with its name."""
import pytest
import torch

from collapse import kinds, manifest, run, stages, storage, tasks
from collapse import plan as planning
from collapse.grid import load_sweep
from collapse.plan import Stage
from helpers import TOY_ENV

SMALL = ["profile=smoke", "cluster=local", "data.train_size=200", "data.test_size=64", "train.epochs=1",
         "results_root=/tmp/unused"]


def build(grid: str, *extra: str) -> planning.Plan:
    return planning.build(load_sweep([f"grid={grid}", *SMALL, *extra]))


def test_the_core_kinds_are_the_stage_kinds_and_an_unknown_one_is_named():
    assert tuple(kinds.CORE) == stages.KINDS
    assert all(kinds.get(name).name == name for name in stages.KINDS)
    with pytest.raises(kinds.UnknownKind, match=r"^no stage kind 'nope': the kinds are pretrain, teacher, "
                                                r"synth_shard, synth, student, generation, eval, report$"):
        kinds.get("nope")
    with pytest.raises(KeyError):          # collapse/compare.py reads such a record as one without key material
        planning.key_material("nope", build("vae_smoke3").stages.popitem()[1].config)
    gaussian = tasks.get("gaussian")
    assert kinds.get(gaussian.SIMULATION_KIND, gaussian) is kinds.SIMULATION
    with pytest.raises(kinds.UnknownKind, match=r"or this task's 'gaussian'$"):
        kinds.get("simulation", gaussian)


@pytest.mark.parametrize("change, section", [("eval.grid_samples=8", "eval"), ("synth.seed=3", "synth"),
                                             ("train.lr=0.01", "train"), ("data.test_size=100", "data")])
def test_a_section_changes_the_keys_of_the_kinds_that_list_it_and_what_reads_them(change, section):
    """The stages whose key changes are exactly those whose kind's key sections hold `section`, and
    everything downstream of them (their key holds their inputs' keys)."""
    before, after = build("vae_smoke3", "synth.shards=2"), build("vae_smoke3", "synth.shards=2", change)
    task = tasks.get("vae")
    listing = {s.key for s in before.stages.values() if section in kinds.get(s.kind, task).key_sections(task)}
    assert listing, section
    expected = {before.stages[k].name for k in planning.downstream(before, listing)}
    old, new = ({s.name: s.key for s in p.stages.values()} for p in (before, after))
    assert old.keys() == new.keys()
    assert {name for name in old if old[name] != new[name]} == expected


def test_the_plan_writes_the_deps_each_class_builds():
    plan = build("vae_smoke3", "synth.shards=2")
    of = {kind: [s for s in plan.stages.values() if s.kind == kind] for kind in stages.KINDS}
    (teacher,), (synth,) = of["teacher"], of["synth"]
    assert teacher.deps == kinds.Teacher.deps() == {}
    assert [s.deps for s in of["synth_shard"]] == [kinds.SynthShard.deps(teacher.key)] * 2
    assert [s.args for s in of["synth_shard"]] == [kinds.SynthShard.args(0), kinds.SynthShard.args(1)]
    assert synth.deps == kinds.Synth.deps(teacher.key, [s.key for s in of["synth_shard"]])
    assert synth.deps[kinds.Synth.shard(1)] == of["synth_shard"][1].key
    assert all(s.deps == kinds.Student.deps(teacher.key, synth.key) for s in of["student"])
    models = {s.deps[kinds.Eval.MODEL] for s in of["eval"]}
    assert models == {teacher.key, *(s.key for s in of["student"])}
    (report,) = of["report"]
    assert report.deps == kinds.Report.deps([s.key for s in of["eval"]])


def test_a_chain_generation_reads_its_samples_by_generation(tmp_path):
    """vae_generations' accumulate chains: generation 3 reads the synth stage's samples as generation 0's and
    generations 1 and 2's own; Generation.samples gives them back by generation from the planned deps."""
    plan = build("vae_generations", "generations.count=3")
    gen3 = next(s for s in plan.stages.values() if s.name == "gen3[data=accumulate,distill=teacher,seed=0]")
    kind = kinds.get(gen3.kind)
    assert plan.stages[gen3.deps[kind.DISTILL_FROM]].name == "teacher[seed=0]"
    roles = [r for r in gen3.deps if r.startswith(kind.DATA)]
    assert roles == [f"{kind.DATA}{g}" for g in range(3)]
    assert plan.stages[gen3.deps[f"{kind.DATA}0"]].kind == kinds.Synth.name
    inputs = {}
    for g, role in enumerate(roles):
        path = storage.save_tensors(tmp_path / f"{g}.safetensors", {"data": torch.full((2, 3), float(g))})
        inputs[role] = {"artifacts": {"data": {"path": path.name, "sha256": storage.sha256(path)}}}
    inputs[kind.DISTILL_FROM] = {}
    ctx = run.StageContext(tasks.get("vae"), None, inputs, tmp_path, tmp_path, print)
    samples = kind.samples(ctx)
    assert sorted(samples) == [0, 1, 2] and all(torch.equal(samples[g], torch.full((2, 3), float(g))) for g in samples)


def test_a_simulation_grid_is_one_stage_per_point_keyed_by_the_task():
    plan = build("gaussian_generations")
    task = tasks.get("gaussian")
    own = [s for s in plan.stages.values() if s.kind == task.SIMULATION_KIND]
    assert own and all(s.deps == kinds.Simulate.deps() for s in own)
    assert kinds.SIMULATION.key_sections(task) == task.SIMULATION_KEY
    assert kinds.Report.reads(task.SIMULATION_KIND) and not kinds.Report.reads(kinds.Teacher.name)
    (report,) = [s for s in plan.stages.values() if s.kind == kinds.Report.name]
    assert report.deps == kinds.Report.deps([s.key for s in own])


def test_the_toy_grid_runs_each_kind_on_the_inputs_its_class_planned(tmp_path, monkeypatch):
    """Teacher, two synth shards, their join, both students and every eval of the toy modality, in process:
    each kind's run finds the inputs the plan built through its class; the join is the shards in order."""
    for name, value in TOY_ENV.items():
        monkeypatch.setenv(name, value)
    plan = planning.build(load_sweep(["grid=toy_lambda", "cluster=local", "synth.shards=2", "train.epochs=1",
                                      "data.train_size=128", "data.test_size=64", "train.threads=1",
                                      f"results_root={tmp_path}"]))
    order = [s for s in plan.stages.values() if s.kind != kinds.Report.name]
    for stage in order:
        stages.write_spec(tmp_path, stage)
    for stage in order:
        assert run.run_stage(tmp_path, stage.key)["status"] == "done", stage.name
    records = {s.key: manifest.read(tmp_path, s.key) for s in order}
    assert all(records[s.key]["deps"] == s.deps for s in order)
    (synth,) = [s for s in order if s.kind == kinds.Synth.name]
    task = tasks.get("toy")
    parts = [kinds.load_data(task, tmp_path, records[synth.deps[kinds.Synth.shard(i)]]) for i in range(2)]
    joined = kinds.load_data(task, tmp_path, records[synth.key])
    assert torch.equal(joined, torch.cat(parts)) and records[synth.key]["metrics"] == {"n": 128, "shards": 2}
    assert [records[synth.deps[kinds.Synth.shard(i)]]["metrics"]["start"] for i in range(2)] == [0, 64]
    evals = [s for s in order if s.kind == kinds.Eval.name]
    assert len(evals) == 3 and all("test_loss" in records[s.key]["metrics"] for s in evals)


def test_a_stage_of_an_unknown_kind_is_recorded_failed_with_the_kind_named(tmp_path):
    teacher = next(s for s in build("vae_smoke3").stages.values() if s.kind == kinds.Teacher.name)
    stage = Stage("nope", "nope0123456789ab", "nope[x]", {}, teacher.config)
    stages.write_spec(tmp_path, stage)
    record = run.run_stage(tmp_path, stage.key)
    assert record["status"] == "failed"
    assert record["error"].startswith("UnknownKind: no stage kind 'nope': the kinds are pretrain, teacher")
    assert manifest.read(tmp_path, stage.key)["status"] == "failed"

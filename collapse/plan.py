"""The stage graph: stages, their content-addressed keys, and the plan of a sweep.

A stage's key hashes its kind, the config fields that determine its output (a path to data or
weights by a fingerprint of its content: collapse/fingerprint.py) and the keys of the stages it
reads. Grid points that share a teacher config share the teacher's key, so the teacher is trained
and sampled once; a relaunch finds finished keys in the manifest and skips them.
"""
import copy
import dataclasses
import functools
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field

from collapse import fingerprint as content, generations, kinds, manifest, stages, tasks
from collapse.config import ConfigError, ExperimentConfig, bad, schema, to_dict
from collapse.grid import Sweep
from collapse.kinds import Eval, Generation, Pretrain, Report, Student, Synth, SynthShard, Teacher
from collapse.tasks.base import Pretrains, Simulation

# Which config sections decide a stage's output: each kind's SECTIONS (collapse/kinds.py). Execution
# details (where the data lives, ZeRO stage, threads, checkpoint interval) do not change the numbers and
# stay out of the key.
# Within those sections, a field marked execution() is never in a key and one marked added_later() is out
# at its default (collapse/config.py, on the fields themselves). data.root is left out as a path; when
# set, its content's fingerprint goes in (see with_fingerprints).
# Fields whose values were respelled: the key keeps the old spelling of the same meaning. train.bf16
# was a bool meaning "bf16 on GPU"; that is now null (auto), and true now means bf16 on CPU too.
RESPELLED = {("train", "bf16"): {None: True, True: "always"}}


def key_sections(kind: str, task) -> tuple:
    """The sections (or "section.field" items) whose values decide a stage of `kind` of `task`."""
    return kinds.get(kind, task).key_sections(task)


@functools.cache
def key_rules(task_name: str) -> tuple[frozenset, dict]:
    """The key marks of every field of `task_name`'s config (collapse/config.py execution, added_later):
    (the fields never in a key, {field: the added-later default that stays out})."""
    return key_marks(schema(task_name, tasks.get(task_name).CONFIG_SECTIONS))


def key_marks(cls) -> tuple[frozenset, dict]:
    """The marks of config class `cls`'s section fields: ({(section, field) never in a key},
    {(section, field): the added-later default that stays out of a key})."""
    hints = typing.get_type_hints(cls)
    never, later = set(), {}
    for section in dataclasses.fields(cls):
        if not dataclasses.is_dataclass(hints[section.name]):
            continue
        for f in dataclasses.fields(hints[section.name]):
            if f.metadata.get("in_key") is False:
                never.add((section.name, f.name))
            if "added_later" in f.metadata:
                later[(section.name, f.name)] = f.metadata["added_later"]
    return frozenset(never), later


def pretrain_config(config: dict) -> dict | None:
    """The config of the pretraining stage a point's models start from, or None (none planned)."""
    task = tasks.get(config["task"])
    return task.pretrain_config(config) if isinstance(task, Pretrains) else None


@dataclass(frozen=True)
class Stage:
    kind: str
    key: str
    name: str
    deps: dict            # role -> key of the stage it reads, e.g. {"teacher": "...", "synth": "..."}
    config: dict          # the full resolved ExperimentConfig, as a dict
    args: dict = field(default_factory=dict)   # what else its runner needs, e.g. {"shard": 3}; in the key
    fingerprints: dict = field(default_factory=dict)   # path field -> its content's fingerprint; in the key

    def spec(self) -> dict:
        spec = {"kind": self.kind, "key": self.key, "name": self.name, "deps": self.deps, "config": self.config}
        if self.fingerprints:
            spec["fingerprints"] = self.fingerprints
        return {**spec, "args": self.args} if self.args else spec


def path_fields(task: str) -> tuple:
    """The config fields of `task` that name data or weights on disk (its PATH_FIELDS)."""
    return tasks.get(task).PATH_FIELDS


def _get(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def fingerprints(config: dict) -> dict:
    """The content fingerprint of each path field that is set, e.g. {"data.root": "sha256:..."}:
    computed here, at plan time, once per path and process; never by a stage."""
    out = {}
    for name in path_fields(config["task"]):
        value = _get(config, name)
        if value is not None:
            try:
                out[name] = content.fingerprint(value)
            except content.FingerprintError as e:
                raise bad(name, value, f"a readable file or directory ({e})") from None
    return out


def with_fingerprints(material: dict, prints: dict) -> dict:
    """`material` with every set path field replaced by its fingerprint, so a moved copy keeps its key.
    A null path field stays as it was (data.root out, model.path null): the keys of the shipped data
    sets and models are those from before paths were fingerprinted."""
    for name, value in prints.items():
        section, _, rest = name.partition(".")
        item = section if section in material else name if name in material else None
        if item is None:
            continue                       # a field this kind's key does not read
        if item == name:
            material[item] = value
            continue
        node = material[item] = copy.deepcopy(material[item])
        *parents, leaf = rest.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return material


def key_material(kind: str, config: dict, prints: dict | None = None) -> dict:
    """What decides a stage's output; `prints`: the fingerprints of its set path fields (without them
    a path stays as written, as when reading a record's config)."""
    task = tasks.get(config["task"])
    not_in_key, added_later = key_rules(config["task"])
    out = {}
    for item in key_sections(kind, task):  # a section, or one field of it ("section.field")
        section, _, name = item.partition(".")
        if section not in config:          # a section this task lacks (e.g. model, for a simulation)
            continue
        value = config[section]
        if name:
            value = value[name] if name in value or (section, name) not in added_later else added_later[(section, name)]
            if (section, name) in added_later and value == added_later[(section, name)]:
                continue                   # a field added later, at its default: out, as in a section
        elif isinstance(value, dict):
            value = {k: RESPELLED[(section, k)].get(v, v) if (section, k) in RESPELLED else v for k, v in value.items()
                     if (section, k) not in not_in_key
                     and not ((section, k) in added_later and v == added_later[(section, k)])}
        out[item] = value
    out = with_fingerprints(out, prints or {})
    pretraining = pretrain_config(config) if kinds.get(kind, task).TRAINS else None
    if pretraining is not None:   # also in the dep's key; here so that records alone tell such models apart
        out["pretrained_from"] = key_material(Pretrain.name, pretraining, prints)
    return out


def stage_key(kind: str, config: dict, deps: dict, args: dict | None = None, prints: dict | None = None) -> str:
    material = {"kind": kind, "config": key_material(kind, config, prints), "deps": deps}
    if args:
        material["args"] = args
    blob = json.dumps(material, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_stage(kind: str, name: str, cfg: ExperimentConfig | dict, deps: dict, args: dict | None = None) -> Stage:
    config = cfg if isinstance(cfg, dict) else to_dict(cfg)
    prints = fingerprints(config)
    return Stage(kind, stage_key(kind, config, deps, args, prints), name, dict(deps), config, dict(args or {}),
                 prints)


def add_pretrain(plan: "Plan", cfg: ExperimentConfig) -> str | None:
    """The key of the pretraining stage `cfg`'s models start from, when its task asks for one, else None.
    Planned once for every seed and row that shares its config."""
    config = pretrain_config(to_dict(cfg))
    if config is None:
        return None
    return plan.add(make_stage(Pretrain.name, f"pretrain[seed={config['train']['seed']}]", config,
                               Pretrain.deps())).key


def add_synth(plan: "Plan", cfg: ExperimentConfig, teacher: Stage) -> Stage:
    """D_M0 from `teacher`: one stage, or synth.shards shard stages (one SLURM array, each its own
    range of items and seed) and a synth stage that joins them."""
    seed, shards = cfg.train.seed, cfg.synth.shards
    parts = [plan.add(make_stage(SynthShard.name, f"synth[seed={seed},shard={i}/{shards}]", cfg,
                                 SynthShard.deps(teacher.key), SynthShard.args(i)))
             for i in range(shards if shards > 1 else 0)]
    return plan.add(make_stage(Synth.name, f"synth[seed={seed}]", cfg, Synth.deps(teacher.key, [p.key for p in parts])))


def add_report(plan: "Plan", sweep: Sweep) -> Stage:
    """The sweep's report, last: it reads every eval (or simulation stage) and runs whatever their outcome."""
    ends = [s.key for s in plan.stages.values() if Report.reads(s.kind)]
    return plan.add(make_stage(Report.name, f"report[{sweep.grid}]", sweep.base, Report.deps(ends)))


def add_teacher(plan: "Plan", cfg: ExperimentConfig) -> tuple[Stage, Stage, str | None]:
    """A seed's teacher, its synthetic set and the pretraining they start from (its key, or None)."""
    seed = cfg.train.seed
    pretrain = add_pretrain(plan, cfg)
    teacher = plan.add(make_stage(Teacher.name, f"teacher[seed={seed}]", cfg, Teacher.deps(pretrain)))
    return teacher, add_synth(plan, cfg, teacher), pretrain


def add_eval(plan: "Plan", cfg: ExperimentConfig, of: str, model: Stage) -> Stage:
    """The eval of `model`, named eval:`of`."""
    return plan.add(make_stage(Eval.name, f"eval:{of}", cfg, Eval.deps(model.key)))


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def point_name(label: dict) -> str:
    return ",".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in label.items())


@dataclass
class Plan:
    stages: dict = field(default_factory=dict)     # key -> Stage, in dependency order
    points: list = field(default_factory=list)     # one row per grid point, for the sweep record
    shape: str = "one_generation"                  # or "chains", or a simulation's kind: how the report reads points

    def add(self, stage: Stage) -> Stage:
        self.stages.setdefault(stage.key, stage)
        return self.stages[stage.key]


def one_generation(sweep: Sweep) -> Plan:
    """teacher -> synth -> students (one per grid point) -> evals; M0 evaluated once per seed."""
    plan = Plan()
    for point in sweep.points:
        cfg, seed = point.config, point.config.train.seed
        teacher, synth, pretrain = add_teacher(plan, cfg)
        name = point_name(point.label)
        student = plan.add(make_stage(Student.name, f"student[{name}]", cfg,
                                      Student.deps(teacher.key, synth.key, pretrain)))
        teacher_eval = add_eval(plan, cfg, f"teacher[seed={seed}]", teacher)
        student_eval = add_eval(plan, cfg, f"student[{name}]", student)
        plan.points.append({"label": point.label, "student": student.key, "eval": student_eval.key,
                            "teacher": teacher.key, "teacher_eval": teacher_eval.key})
    return plan


def chains(sweep: Sweep) -> Plan:
    """Iterative retraining: per grid point a chain teacher -> synth -> generation 1 -> ... -> G.

    Generation t+1 reads, as deps, the stages holding the samples its data policy needs
    ("data.<g>": the synth stage for g = 0, generation g's own stage after) and, when distilling,
    the model it distils from ("distill_from": M0 or generation t). Each generation has an eval.
    Chains with the same seed share the teacher, its synth and eval, and any common prefix.
    Stages are added generation by generation across chains, so an executor that starts them in
    plan order brings every chain to generation t before any goes further.
    """
    plan = Plan(shape="chains")
    chains = []
    for point in sweep.points:
        cfg = generations.canonical(point.config)
        teacher, synth, pretrain = add_teacher(plan, cfg)
        teacher_eval = add_eval(plan, cfg, f"teacher[seed={cfg.train.seed}]", teacher)
        # per generation: its model, the stage holding its samples, its eval
        chains.append((point, cfg, {"models": [teacher.key], "data": [synth.key], "evals": [teacher_eval.key],
                                    "pretrain": pretrain}))
    for t in range(max(cfg.generations.count for _, cfg, _ in chains)):
        for point, cfg, chain in chains:
            gen, name = cfg.generations, point_name(point.label)
            if t >= gen.count:
                continue
            data = {g: chain["data"][g] for g in generations.sources(gen.data, t)}
            distill_from = None if gen.distill == "none" else chain["models"][0 if gen.distill == "teacher" else t]
            stage = plan.add(make_stage(Generation.name, f"gen{t + 1}[{name}]", cfg,
                                        Generation.deps(data, chain["pretrain"], distill_from)))
            chain["models"].append(stage.key)
            chain["data"].append(stage.key)
            chain["evals"].append(add_eval(plan, cfg, f"gen{t + 1}[{name}]", stage).key)
    for point, _, chain in chains:
        plan.points.append({"label": point.label, "models": chain["models"], "evals": chain["evals"],
                            "teacher": chain["models"][0], "teacher_eval": chain["evals"][0]})
    return plan


def simulations(sweep: Sweep, task) -> Plan:
    """A simulation task: one stage per grid point simulates all its chains (collapse/tasks/base.py)."""
    kind = task.SIMULATION_KIND
    plan = Plan(shape=kind)
    for point in sweep.points:
        stage = plan.add(make_stage(kind, f"{kind}[{point_name(point.label)}]",
                                    generations.canonical_chain(point.config), kinds.Simulate.deps()))
        plan.points.append({"label": point.label, kind: stage.key})
    return plan


def build(sweep: Sweep) -> Plan:
    """The stage graph of a sweep: chains when generations.count is set, else one generation."""
    chained = {p.config.generations.count is not None for p in sweep.points}
    if len(chained) > 1:
        raise ConfigError(f"grid '{sweep.grid}': generations.count is null for some points and set for "
                          "others; set it for all (a chain sweep) or none")
    task = tasks.get(sweep.base.task)
    if isinstance(task, Simulation):
        plan = simulations(sweep, task)
    else:
        plan = chains(sweep) if chained == {True} else one_generation(sweep)
    add_report(plan, sweep)
    return plan


def sweep_record(sweep: Sweep, plan: Plan) -> dict:
    """The manifest record that tells the report which stages make up this sweep."""
    blob = json.dumps({"grid": sweep.grid, "points": plan.points}, sort_keys=True)
    key = "sweep-" + hashlib.sha256(blob.encode()).hexdigest()[:16]
    return {"kind": "sweep", "key": key, "name": sweep.grid, "status": "done", "ended": manifest.now(),
            "config": {"grid": sweep.grid, "argv": sweep.argv, "task": sweep.base.task, "plan": plan.shape,
                       "points": plan.points, "stages": list(plan.stages)}}


def matching(plan: Plan, pattern: str) -> set:
    """Keys of the stages `pattern` names: a stage kind, or a stage name with * and ? as wildcards
    (brackets are literal: 'student[lam=0.5*' names the students with lam 0.5 first)."""
    names = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + r"\Z")
    return {s.key for s in plan.stages.values() if s.kind == pattern or names.match(s.name)}


def downstream(plan: Plan, keys: set) -> set:
    """`keys` and every stage of `plan` that reads one of them, directly or not."""
    return stages.downstream(keys, {s.key: s.deps.values() for s in plan.stages.values()})

"""The stage graph: stages, their content-addressed keys, and the plan of a sweep.

A stage's key hashes its kind, the config fields that determine its output and the keys of
the stages it reads. Grid points that share a teacher config share the teacher's key, so the
teacher is trained and sampled once; a relaunch finds finished keys in the manifest and skips them.
"""
import hashlib
import json
from dataclasses import dataclass, field

from collapse import manifest
from collapse.config import ExperimentConfig, to_dict
from collapse.grid import Sweep

# Which config sections decide a stage's output. Execution details (where the data lives,
# ZeRO stage, threads, checkpoint interval) do not change the numbers and stay out of the key.
KEY_SECTIONS = {
    "teacher": ("task", "data", "model", "train"),
    "synth": ("task", "synth"),
    "student": ("task", "model", "train", "distill"),
    "eval": ("task", "data", "eval"),
}
NOT_IN_KEY = {("data", "root"), ("train", "zero_stage"), ("train", "threads"), ("train", "checkpoint_every")}
KINDS = tuple(KEY_SECTIONS)


@dataclass(frozen=True)
class Stage:
    kind: str
    key: str
    name: str
    deps: dict            # role -> key of the stage it reads, e.g. {"teacher": "...", "synth": "..."}
    config: dict          # the full resolved ExperimentConfig, as a dict

    def spec(self) -> dict:
        return {"kind": self.kind, "key": self.key, "name": self.name, "deps": self.deps, "config": self.config}


def key_material(kind: str, config: dict) -> dict:
    out = {}
    for section in KEY_SECTIONS[kind]:
        value = config[section]
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if (section, k) not in NOT_IN_KEY}
        out[section] = value
    return out


def stage_key(kind: str, config: dict, deps: dict) -> str:
    blob = json.dumps({"kind": kind, "config": key_material(kind, config), "deps": deps}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_stage(kind: str, name: str, cfg: ExperimentConfig, deps: dict) -> Stage:
    config = to_dict(cfg)
    return Stage(kind, stage_key(kind, config, deps), name, dict(deps), config)


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def point_name(label: dict) -> str:
    return ",".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in label.items())


@dataclass
class Plan:
    stages: dict = field(default_factory=dict)     # key -> Stage, in dependency order
    points: list = field(default_factory=list)     # one row per grid point, for the sweep record

    def add(self, stage: Stage) -> Stage:
        self.stages.setdefault(stage.key, stage)
        return self.stages[stage.key]


def one_generation(sweep: Sweep) -> Plan:
    """teacher -> synth -> students (one per grid point) -> evals; M0 evaluated once per seed."""
    plan = Plan()
    for point in sweep.points:
        cfg, seed = point.config, point.config.train.seed
        teacher = plan.add(make_stage("teacher", f"teacher[seed={seed}]", cfg, {}))
        synth = plan.add(make_stage("synth", f"synth[seed={seed}]", cfg, {"teacher": teacher.key}))
        name = point_name(point.label)
        student = plan.add(make_stage("student", f"student[{name}]", cfg,
                                      {"teacher": teacher.key, "synth": synth.key}))
        teacher_eval = plan.add(make_stage("eval", f"eval:teacher[seed={seed}]", cfg, {"model": teacher.key}))
        student_eval = plan.add(make_stage("eval", f"eval:student[{name}]", cfg, {"model": student.key}))
        plan.points.append({"label": point.label, "student": student.key, "eval": student_eval.key,
                            "teacher": teacher.key, "teacher_eval": teacher_eval.key})
    return plan


def build(sweep: Sweep) -> Plan:
    """The stage graph of a sweep."""
    return one_generation(sweep)


def sweep_record(sweep: Sweep, plan: Plan) -> dict:
    """The manifest record that tells the report which stages make up this sweep."""
    blob = json.dumps({"grid": sweep.grid, "points": plan.points}, sort_keys=True)
    key = "sweep-" + hashlib.sha256(blob.encode()).hexdigest()[:16]
    return {"kind": "sweep", "key": key, "name": sweep.grid, "status": "done", "ended": manifest.now(),
            "config": {"grid": sweep.grid, "argv": sweep.argv, "task": sweep.base.task,
                       "points": plan.points, "stages": list(plan.stages)}}

"""The dry run's disk estimate (collapse/disk.py): per stage kind, from the model and data sizes in the
configs; the parameter counts are the built models' own; a filesystem with less free space than the
estimate is a warning, in the dry run and at launch."""
import io
import re
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from collapse import disk, launch as launch_module, preflight
from collapse.grid import load_sweep
from collapse.plan import build

Usage = namedtuple("Usage", "total used free")
KINDS = ("teacher", "synth", "student", "eval", "report")


def dry_run(*argv) -> str:
    out = io.StringIO()
    assert launch_module.launch([*argv, "cluster=local", "dry_run=true"], out=out) == 0
    return out.getvalue()


def test_parameter_counts_are_those_of_the_built_models():
    from collapse.models import t5 as t5_model
    from collapse.models.unet import UNet
    from collapse.models.vae import VAE

    def count(model):
        return sum(p.numel() for p in model.parameters())
    assert disk.vae_parameters({"hidden": 420, "latent": 20}) == count(VAE(hidden=420, latent=20)) == 887_264
    for m in ({"image_size": 64, "channels": 3, "block_channels": [128, 128, 256, 256, 256], "attention_level": 2,
               "layers_per_block": 2, "norm_groups": 32},    # the paper's: 38,390,019
              {"image_size": 32, "channels": 1, "block_channels": [8, 16, 32], "attention_level": 0,
               "layers_per_block": 3, "norm_groups": 4}):
        built = UNet(image_size=m["image_size"], channels=m["channels"], block_channels=tuple(m["block_channels"]),
                     attention_level=m["attention_level"], layers_per_block=m["layers_per_block"],
                     norm_groups=m["norm_groups"])
        assert disk.unet_parameters(m) == count(built)
    for m in ({"vocab": 32128, "d_model": 512, "layers": 6, "heads": 8, "d_ff": 2048},   # t5-small: 60,506,624
              {"vocab": 1024, "d_model": 64, "layers": 2, "heads": 4, "d_ff": 128}):
        built = t5_model.built(m["vocab"], m["d_model"], m["layers"], m["heads"], m["d_ff"], 0.1, 0, 1)
        assert disk.t5_parameters(m) == count(built)


def test_the_paper_t5_grid_per_kind(tmp_path):
    paths = {}
    for name, key in (("t5-small", "model.path"), ("gpt2", "eval.ppl_model.path"), ("cnn", "data.root")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        paths[key] = tmp_path / name
    plan = build(load_sweep(["grid=t5_lambda_cnndm", "cluster=local", *(f"{k}={v}" for k, v in paths.items())]))
    stages = list(plan.stages.values())
    kinds, unknown = disk.by_kind(stages)
    assert unknown == [] and set(kinds) == {"teacher", "synth_shard", "synth", "student", "eval", "report"}
    count, total, teacher = kinds["teacher"]
    assert teacher["checkpoint"] == 60_506_624 * 16 and teacher["weights"] == 60_506_624 * 4   # ZeRO-2: master copy
    assert teacher["while running"] == teacher["checkpoint"]
    shards = kinds["synth_shard"][0]
    rows = 287_113 * 4 * (1024 + 128)                        # every training article's int32 summary row
    assert kinds["synth"][2]["synthetic set"] == rows       # the join, and the shards' parts as much again
    assert kinds["synth_shard"][1] - shards * disk.LOG_BYTES == pytest.approx(rows, abs=shards)
    assert kinds["student"][0] == 6
    assert disk.total_bytes(stages) == pytest.approx(
        sum(disk.staying(disk.stage_bytes(s.kind, s.config)) for s in stages) + teacher["checkpoint"])
    assert 10e9 < disk.total_bytes(stages) < 13e9            # 7 trained models of 1.2 GB, 2.6 GB of summaries


def test_the_dry_run_of_a_smoke_grid_prints_the_estimate_per_stage_kind(tmp_path):
    root = tmp_path / "not" / "made" / "yet"
    out = dry_run("grid=vae_coeffs", "profile=smoke", f"results_root={root}")
    assert not (tmp_path / "not").exists()
    stages = list(build(load_sweep(["grid=vae_coeffs", "profile=smoke", "cluster=local",
                                    f"results_root={root}"])).stages.values())
    total = disk.size(disk.total_bytes(stages))
    free = disk.size(shutil.disk_usage(tmp_path).free)
    assert re.search(rf"^disk: {re.escape(total)} more under results_root \(\S+ \S+ free on {tmp_path}\)$", out, re.M), out
    assert free.split()[1] in out
    lines = {m.group(1): m.group(0) for m in re.finditer(r"^  (\w+): .*$", out, re.M)}
    assert set(KINDS) <= set(lines), out
    weights = disk.size(887_264 * 4)
    assert f"checkpoint {disk.size(887_264 * 16)}, weights {weights}" in lines["teacher"]
    assert "16 stages" in lines["student"] and "synthetic set" in lines["synth"]
    assert "warnings: none" in out


def test_too_little_free_space_is_a_warning(tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 << 20, (10 << 20) - 4000, 4000))
    out = dry_run("grid=vae_coeffs", "profile=smoke", f"results_root={tmp_path / 'r'}")
    notes = re.search(r"^warnings: (\d+)\n((?:  - .*\n)*)", out, re.M)
    assert notes and notes.group(1) == "1", out
    assert re.fullmatch(rf"  - disk: the stages to run write about \S+ \S+ under results_root; {tmp_path} has 4 KB "
                        r"free: free some, or put results_root on a larger filesystem\n", notes.group(2))
    monkeypatch.setattr(shutil, "disk_usage", real)
    assert "warnings: none" in dry_run("grid=vae_coeffs", "profile=smoke", f"results_root={tmp_path / 'r'}")


def test_the_warning_is_one_of_the_launch_warnings(tmp_path, monkeypatch):
    sweep = load_sweep(["grid=vae_smoke3", "profile=smoke", "cluster=local"])
    stages = list(build(sweep).stages.values())
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(1 << 30, 1 << 30, 0))
    notes = preflight.warnings(sweep, stages, tmp_path, "local", {})
    assert [n for n in notes if n.startswith("disk: ")] == [
        f"disk: the stages to run write about {disk.size(disk.total_bytes(stages))} under results_root; "
        f"{tmp_path} has 0 B free: free some, or put results_root on a larger filesystem"]
    assert disk.free_bytes(Path(tmp_path) / "a" / "b") == (0, tmp_path)

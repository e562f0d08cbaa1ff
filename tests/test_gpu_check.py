"""bench/gpu_check.sh --tiny runs end to end on the CPU (the measurements at tiny sizes, the dry run from
their rates file), and the file it writes changes a dry run's GPU estimate (rates=FILE on a launch)."""
import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from collapse import launch, preflight
from collapse.tasks import gpu_rates

REPO = Path(__file__).resolve().parent.parent
DISTRIBUTED = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def rates_file(tmp_path_factory):
    rates = tmp_path_factory.mktemp("check") / "rates.json"
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED}
    env.update(OMP_NUM_THREADS="1", RATES=str(rates))
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--tiny"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"gpu_check: measure PASS \d+ measurements", done.stdout), done.stdout
    assert "gpu_check: dry_run[rates] PASS" in done.stdout, done.stdout
    return rates


def test_the_tiny_check_measures_every_stage_part_and_writes_every_rate(rates_file):
    data = json.loads(rates_file.read_text())
    names = {m["name"] for m in data["measurements"]}
    for name in ("unet.train.plain", "unet.train.distilled", "t5.train.plain", "t5.train.distilled",
                 "unet.sample.fp32.b4", "unet.sample.bf16.b8", "t5.encoder.fp32.b4", "t5.generate.bf16.b4",
                 "inception.b2", "gpt2.score.b32"):
        assert name in names, (name, sorted(names))
    assert set(data["rates"]) == set(gpu_rates.STATED)
    assert set(data["rates"]["unet_sample_flops_s"]) == {"fp32", "bf16"}
    assert all(m["seconds"] > 0 and m["items_per_s"] > 0 for m in data["measurements"])
    assert gpu_rates.load(str(rates_file))["device"].startswith("CPU")


def test_a_dry_run_with_the_rates_file_estimates_from_it(rates_file, monkeypatch, tmp_path):
    monkeypatch.setattr(preflight, "local_gpus", lambda: 1)   # the local executor prices stages on one GPU
    argv = ["grid=ddpm_lambda", "profile=smoke", "cluster=local", f"results_root={tmp_path}", "dry_run=true"]
    printed = {}
    try:
        for name, extra in (("stated", []), ("measured", [f"rates={rates_file}"])):
            out = io.StringIO()
            assert launch.launch(argv + extra, out=out) == 0
            printed[name] = out.getvalue()
            gpu_rates.use(None)
    finally:
        gpu_rates.use(None)
    hours = {k: re.search(r"estimate: ([\d.]+) core-hours", v).group(1) for k, v in printed.items()}
    assert hours["stated"] != hours["measured"], hours
    assert "stated rate on 1 A100 (bf16)" in printed["stated"]
    assert f"measured rate on 1 CPU (--tiny sizes) ({rates_file})" in printed["measured"]
    assert "stated rate" not in printed["measured"]


def test_a_bad_rates_file_is_one_line_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"device": "x", "rates": {"unet_sample_flops_s": 5}}))
    assert launch.launch(["grid=vae_coeffs", "profile=smoke", "cluster=local", "dry_run=true", f"rates={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unet_sample_flops_s" in err and "{precision: number > 0}" in err, err
    assert launch.launch(["grid=vae_coeffs", "dry_run=true", f"rates={tmp_path / 'none.json'}"]) == 2
    assert "key 'rates'" in capsys.readouterr().err
    gpu_rates.use(None)

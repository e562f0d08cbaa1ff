"""--help of every sweeps/ command answers at once, without torch: usage, and for a launch the grids
with their descriptions, the profiles, the clusters and the keys it takes itself; and show=config, a
launch that prints the config it composed and runs nothing."""
import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from collapse.config import ConfigError
from collapse.launch import launch, launch_options

REPO = Path(__file__).resolve().parent.parent
CHECK = """import runpy, sys
sys.argv = [{script!r}, "--help"]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as e:
    assert e.code == 0, e.code
assert "torch" not in sys.modules, "--help imported torch"
"""


@pytest.mark.parametrize("command", ["launch.py", "status.py", "cancel.py", "report.py", "export.py"])
def test_help_is_complete_and_imports_no_torch(command):
    script = str(REPO / "sweeps" / command)
    out = subprocess.run([sys.executable, "-c", CHECK.format(script=script)], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"usage: python sweeps/{command}") and "docs/usage.md" in out.stdout
    if command == "launch.py":
        for needle in ("vae_coeffs ", "Table 1 of the paper", "ddpm_lambda_celeba", "profiles", "smoke",
                       "clusters", "auto", "slurm", "local", "results_root=DIR", "seeds=", "dry_run=true", "redo=",
                       "show=config"):
            assert needle in out.stdout, needle
    if command == "status.py":
        for needle in ("results_root=DIR", "grid=NAME", "watch=true", "--watch", "every=", "log=NAME", "lines=",
                       "time to go", "tail -f", "unique prefix"):
            assert needle in out.stdout, needle


def test_show_config_prints_the_composed_config_rows_and_seeds_and_runs_nothing(tmp_path):
    """show=config: the base config after profile, cluster, grid and command line, as YAML; each row's
    label and keys; the seeds; exit 0 before the data checks (64 hold-out images cannot feed 5,000
    FID samples, which a launch would refuse) and with nothing written."""
    out, root = io.StringIO(), tmp_path / "r"
    code = launch(["grid=ddpm_lambda", "profile=smoke", "cluster=local", "show=config", f"results_root={root}",
                   "seeds=[0,1]", "train.lr=0.002", "eval.fid_samples=5000"], out=out)
    assert code == 0 and not root.exists()
    shown = yaml.safe_load(out.getvalue())
    assert out.getvalue().startswith("# grid ddpm_lambda (12 points)")
    config = shown["config"]
    assert config["task"] == "ddpm" and config["results_root"] == str(root)
    assert config["train"]["lr"] == 0.002 and config["eval"]["fid_samples"] == 5000      # the command line
    assert config["data"]["test_size"] == 64 and config["train"]["threads"] == 1          # the task's smoke sizes
    assert config["cluster"]["backend"] == "local" and shown["cluster"] == "local"        # the cluster file
    assert [r["label"] for r in shown["rows"]][:2] == ["lam=0,encoder_mse=0", "lam=1,encoder_mse=0"]
    assert shown["rows"][-1]["set"] == {"distill.lam": 0.5, "distill.encoder_mse": 0.5}
    assert len(shown["rows"]) == 6 and shown["seeds"] == [0, 1]


def test_show_config_of_a_paper_grid_whose_paths_are_not_here_prints_it_unchecked_with_the_error():
    """t5_lambda_cnndm names data and weights a cluster has (cnn_dailymail, t5-small): show=config still
    prints what the files compose, marked unchecked, with the error the launch would stop with."""
    out = io.StringIO()
    code = launch(["grid=t5_lambda_cnndm", "cluster=local", "show=config", "train.lr=3e-5"], out=out)
    text = out.getvalue()
    assert code == 0 and "NOT CHECKED" in text.splitlines()[0]
    assert "# error: key 'data.root': value 'cnn_dailymail'" in text
    shown = yaml.safe_load(text)
    assert shown["config"]["model"]["path"] == "t5-small" and shown["config"]["train"]["lr"] == 3e-5
    assert shown["rows"][0] == {"distill.lam": 0.0} and len(shown["rows"]) == 6 and shown["seeds"] == [0]


def test_show_takes_only_config():
    with pytest.raises(ConfigError, match="key 'show'.*one of: config"):
        launch_options(["grid=vae_coeffs", "show=plan"])

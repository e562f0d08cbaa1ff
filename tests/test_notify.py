"""notify=ADDRESS (issue 31 item 2): SLURM mails ADDRESS when a stage's job fails and when the report's job (the
sweep's end) ends; the address is checked before anything is written; the dry run shows the mail options on
the right jobs, and a real submission to the local SLURM carries them (scontrol shows them on each job)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
sys.path.insert(0, str(REPO))

from collapse import launch as launching  # noqa: E402
from collapse.config import ClusterConfig, build  # noqa: E402
from collapse.executors.slurm import sbatch_parameters, with_mail  # noqa: E402
from collapse.slurm_index import read_index  # noqa: E402

from helpers import cluster, launch_toy as launch, toy_env  # noqa: E402,F401


@pytest.mark.parametrize("value", ["", "me@lab.org,you@lab.org", "me@lab.org; rm -rf ~", "me @lab.org", "@lab.org"])
def test_a_bad_address_is_one_line_naming_notify_before_anything_is_written(value, tmp_path, capsys):
    root = tmp_path / "r"
    code = launching.launch(["grid=vae_smoke3", f"results_root={root}", f"notify={value}", "cluster=local"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"key 'notify': value '{value}' is not allowed; expected one e-mail address" in err
    assert not root.exists()


def test_mail_fail_on_every_stage_end_and_fail_on_the_report_the_users_types_kept():
    cluster = build(ClusterConfig, {"sbatch": {"mail-type": "BEGIN"},
                                    "stages": {"student": {"sbatch": {"mail_type": "REQUEUE"}}}}, "cluster.")
    mailed = with_mail(cluster, "me@lab.org")

    def mail(kind):
        extra = sbatch_parameters(mailed.resources(kind), "x", None)["additional_parameters"]
        return extra.get("mail-type"), extra.get("mail-user")

    assert mail("report") == ("BEGIN,END,FAIL", "me@lab.org")
    assert mail("teacher") == mail("eval") == ("BEGIN,FAIL", "me@lab.org")
    assert mail("student") == ("REQUEUE,FAIL", "me@lab.org")   # a kind's own types replace the cluster's, as before
    # the config given is not changed
    assert cluster.sbatch == {"mail-type": "BEGIN"} and cluster.stages == {"student": {"sbatch": {"mail_type": "REQUEUE"}}}


def mail_of(line: str) -> tuple:
    words = dict(w[2:].split("=", 1) for w in line.replace(";", " ").split() if w.startswith("--mail-"))
    return words.get("mail-type"), words.get("mail-user")


def test_the_dry_run_shows_the_mail_options_on_the_right_jobs(cluster, tmp_path):
    out = launch("cluster=slurm", f"results_root={tmp_path / 'r'}", "notify=me@lab.org", "dry_run=true")
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    jobs = [line for line in out.stdout.splitlines() if line.startswith(("  <job", "  <canary>"))]
    assert len(jobs) == 7, out.stdout   # the canary, teacher, synth, eval of the teacher, students, their evals, report
    for line in jobs:
        expected = "END,FAIL" if " report x1 " in line else "FAIL"
        assert mail_of(line) == (expected, "me@lab.org"), line
    plain = launch("cluster=slurm", f"results_root={tmp_path / 'r'}", "dry_run=true")
    assert plain.returncode == 0 and "--mail-" not in plain.stdout


def scontrol(job: str) -> dict:
    text = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=20).stdout
    first = text.splitlines()[0]
    return dict(w.split("=", 1) for w in first.split() if "=" in w)


def test_a_submitted_sweep_carries_the_mail_options_to_slurm(cluster, tmp_path):
    root = tmp_path / "r"
    out = launch("cluster=slurm", f"results_root={root}", "notify=me@lab.org")
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    try:
        launched = read_index(root)["launches"][-1]
        jobs = {a["kind"]: a["job"] for a in launched["arrays"]} | {"canary": launched["canary"]["job"]}
        assert set(jobs) == {"canary", "teacher", "synth", "eval", "student", "report"}, jobs
        for kind, job in jobs.items():
            shown = scontrol(job)
            assert shown.get("MailUser") == "me@lab.org", (kind, shown)
            assert shown.get("MailType") == ("END,FAIL" if kind == "report" else "FAIL"), (kind, shown)
    finally:
        subprocess.run([sys.executable, str(REPO / "sweeps" / "cancel.py"), f"results_root={root}"],
                       capture_output=True, text=True, timeout=120, env=toy_env(), cwd=REPO)

"""Installed, not only checked out: a wheel built from the checkout (setup.cfg) and installed non-editable
into a fresh venv runs from a folder outside the checkout, `python -m collapse COMMAND` and the `collapse`
script answer as sweeps/COMMAND.py does, and a grid launches (its configs and grids travel as package
data, collapse/_tree/). The venv borrows the project venv's packages through a .pth line (no network),
so only collapse itself comes from the wheel."""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
COMMANDS = ("launch", "status", "report", "cancel", "compare")


def source_copy(src: Path) -> Path:
    """What a build reads, copied: building in the checkout would leave build/ and an egg-info there."""
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(REPO / name, src / name)
    for name in ("collapse", "configs", "sweeps"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


def fresh_venv(where: Path) -> Path:
    """A venv of the base Python whose site-packages also reads the project venv's (a .pth line)."""
    subprocess.run([str(Path(sys.base_prefix) / "bin" / "python3"), "-m", "venv", "--without-pip", str(where)],
                   check=True, timeout=120)
    python = where / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "project-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")   # torch & co.
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the wheel, the venv's python, a folder outside the checkout to run from)."""
    top = tmp_path_factory.mktemp("install")
    src = source_copy(top / "src")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(top / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((top / "dist").glob("collapse-*.whl"))
    python = fresh_venv(top / "venv")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    away = top / "elsewhere"
    away.mkdir()
    return wheel, python, away


def env(**extra) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLLAPSE_TASKS", "COLLAPSE_CONFIG_DIR",
                                                              "COLLAPSE_GRID_DIR")}
    return {**clean, "OMP_NUM_THREADS": "1", **extra}


def run(python, away, *args, timeout=300, **extra):
    return subprocess.run([str(python), *map(str, args)], capture_output=True, text=True, cwd=away,
                          env=env(**extra), timeout=timeout)


def test_the_wheel_holds_every_package_config_and_grid(installed):
    wheel, python, away = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in REPO.glob("collapse/**/__init__.py"):   # a subpackage setup.cfg does not list is missing here
        assert init.relative_to(REPO).as_posix() in names, init
    shipped = [p for part in ("configs", "sweeps") for p in (REPO / part).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts]
    assert len(shipped) > 40
    for p in shipped:
        assert f"collapse/_tree/{p.relative_to(REPO).as_posix()}" in names, p
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "collapse = collapse.__main__:main" in zipfile.ZipFile(wheel).read(entry).decode()
    where = run(python, away, "-c", "import collapse, collapse.config as c; print(collapse.__file__); print(c.TREE)")
    module, tree = where.stdout.split()
    assert Path(module).is_relative_to(python.parent.parent) and not Path(module).is_relative_to(REPO)
    assert Path(tree) == Path(module).parent / "_tree"


def test_each_command_answers_help_as_its_sweeps_script_does(installed):
    wheel, python, away = installed
    script = python.parent / "collapse"
    for command in COMMANDS:
        want = subprocess.run([sys.executable, str(REPO / "sweeps" / f"{command}.py"), "--help"], capture_output=True,
                              text=True, cwd=REPO, env=env(), timeout=120)
        assert want.returncode == 0 and want.stdout.startswith("usage:"), command
        for argv in ([str(python), "-m", "collapse", command, "--help"], [str(script), command, "--help"]):
            got = subprocess.run(argv, capture_output=True, text=True, cwd=away, env=env(), timeout=120)
            assert (got.returncode, got.stdout) == (0, want.stdout), (argv, got.stderr[-2000:])
    out = run(python, away, "-m", "collapse", "relaunch")
    assert out.returncode == 2 and "command 'relaunch' is not allowed; expected one of: launch, status" in out.stderr


def test_an_installed_dry_run_plans_the_checkouts_stages(installed, tmp_path):
    """The shipped configs and grids are the checkout's: the same stage keys, to the last hex digit."""
    wheel, python, away = installed
    args = ["grid=vae_coeffs", "profile=smoke", "cluster=local", "dry_run=true", f"results_root={tmp_path / 'r'}"]
    got = run(python, away, "-m", "collapse", "launch", *args)
    assert got.returncode == 0, got.stderr[-3000:]
    want = subprocess.run([sys.executable, str(REPO / "sweeps" / "launch.py"), *args], capture_output=True, text=True,
                          cwd=REPO, env=env(), timeout=300)
    assert want.returncode == 0, want.stderr[-3000:]
    keys = set(re.findall(r"\b[0-9a-f]{16}\b", got.stdout))
    assert len(keys) >= 36 and keys == set(re.findall(r"\b[0-9a-f]{16}\b", want.stdout))
    assert not (tmp_path / "r").exists()   # a dry run writes nothing
    mine = away / "mine.yaml"   # a grid can still be a path: a copy of vae_coeffs, named by its file
    mine.write_text((REPO / "sweeps" / "grids" / "vae_coeffs.yaml").read_text())
    by_path = run(python, away, "-m", "collapse", "launch", *args[1:], "grid=mine.yaml")
    assert by_path.returncode == 0 and "dry run of grid mine " in by_path.stdout, by_path.stderr[-2000:]
    assert set(re.findall(r"\b[0-9a-f]{16}\b", by_path.stdout)) == keys and "report[mine]" in by_path.stdout
    bad = run(python, away, "-m", "collapse", "launch", "grid=no_such_grid")
    assert bad.returncode != 0 and "grid" in bad.stderr and "vae_coeffs" in bad.stderr   # the shipped grids named


@pytest.mark.slow   # a real launch: 8 toy stages, about 30 s on quiet cores
def test_an_installed_package_launches_a_grid_from_its_own_snapshot(installed, tmp_path):
    wheel, python, away = installed
    root = tmp_path / "r"
    out = run(python, away, "-m", "collapse", "launch", "grid=toy_lambda", "profile=smoke", "cluster=local",
              "train.threads=1", f"results_root={root}", timeout=600, PYTHONPATH=str(TESTS),
              COLLAPSE_TASKS="toy=toy_task", COLLAPSE_CONFIG_DIR=str(TESTS / "toy"),
              COLLAPSE_GRID_DIR=str(TESTS / "toy" / "grids"))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (root / "manifest").glob("*.json")]
    assert sorted(r["status"] for r in records) == ["done"] * 9   # 8 stages and the sweep
    (snap,) = (root / "code").iterdir()
    info = json.loads((snap / "SNAPSHOT.json").read_text())
    assert Path(info["source"]).is_relative_to(python.parent.parent)   # copied from the install, not the checkout
    assert info["commit"] is None   # no git there
    assert (snap / "configs" / "deepspeed" / "zero0.json").is_file() and (snap / "sweeps" / "grids").is_dir()
    assert not (snap / "collapse" / "_tree").exists()   # configs/ and sweeps/ once, at the checkout's places
    assert {r.get("code") for r in records if r["kind"] != "sweep"} == {snap.name}
    status = run(python, away, "-m", "collapse", "status", f"results_root={root}")
    assert status.returncode == 0 and "report[toy_lambda]" in status.stdout


def test_an_editable_install_still_reads_the_checkouts_tree(installed, tmp_path):
    """make setup installs with -e: setup.cfg's mapping of collapse._tree must leave that working."""
    wheel, python, away = installed
    src = source_copy(tmp_path / "src")
    editable = fresh_venv(tmp_path / "venv")
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(editable), "install", "-q", "--no-deps",
                          "--no-build-isolation", "-e", str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    where = run(editable, away, "-c", "import collapse.config as c, collapse.grid as g; print(c.TREE); print(g.GRID_DIR)")
    assert where.stdout.split() == [str(src), str(src / "sweeps" / "grids")], where.stderr[-2000:]
    out = run(editable, away, "-m", "collapse", "launch", "--help")
    assert out.returncode == 0 and "vae_coeffs" in out.stdout

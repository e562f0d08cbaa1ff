"""The house rules, read from the source: no import cycles (imports through importlib strings count),
neither between modules nor between floors (each folder of collapse/ one node, each top-level module one),
no module over 400 lines and no function over 60, none in run, train or the executors over 6 parameters
(one named exception below), a core that names no modality, and imports inside functions only where they
keep torch (or another heavy library) out of a torch-free command, said so in a comment on that line;
and no test module importing another (or conftest): what tests share lives in tests/helpers.py.

Run alone: python tests/test_house.py (prints every finding)."""
import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "collapse"
MAX_LINES = 400
CORE = ("config", "grid", "plan", "kinds", "run", "manifest", "lease", "storage", "status", "dryrun", "cancel",
        "launch", "train", "distributed", "stages", "preflight", "executors")
MODALITIES = ("vae", "ddpm", "t5", "gaussian", "mnist", "celeba", "rouge", "fid", "unet")
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 6      # in the modules of FEW_PARAMETERS, self and cls not counted
FEW_PARAMETERS = ("collapse.run", "collapse.train", "collapse.executors")
# train.train: five inputs (task, config, the two data sets, the folder) and three keyword-only options
# with defaults (teacher, log, init), named at every call; folding them into **options would hide them.
MORE_PARAMETERS = {"collapse.train:train": 8}
LAZY_REASON = re.compile(r"#.*\b(torch|heavy|slow import|torch-free)\b", re.I)


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imported(tree: ast.AST, name: str, known: dict) -> set[str]:
    """collapse.* modules `name` imports, at any depth, with importlib.import_module("...") strings."""
    found = set()
    package = name if known[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                base = ".".join(up[:len(up) - node.level + 1] + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = subs if len(subs) == len(node.names) else [base, *subs]   # `from pkg import module`: the module
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                targets = [arg.value]
            elif isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.Constant):
                prefix = arg.values[0].value.rstrip(".")
                targets = [m for m in known if m.startswith(prefix + ".")]   # any module it may name
        found |= {t for t in targets if t in known and t != name}
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {n: imported(ast.parse(p.read_text()), n, known) for n, p in known.items()}


def folder_of(name: str) -> str:
    """The node a module is in the folder-level graph: collapse.report.tables -> collapse.report."""
    return ".".join(name.split(".")[:2])


def folder_graph() -> dict[str, set[str]]:
    """Each folder of collapse/ (executors, report, tasks, ...) one node, each top-level module one."""
    graph = {}
    for n, targets in import_graph().items():
        graph.setdefault(folder_of(n), set()).update(folder_of(m) for m in targets if folder_of(m) != folder_of(n))
    return graph


def cycles(graph: dict[str, set[str]] | None = None) -> list[list[str]]:
    graph = import_graph() if graph is None else graph
    found, state = [], {}

    def visit(n, path):
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                found.append(path[path.index(m):] + [m])
            elif m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return found


def long_modules() -> list[str]:
    return [f"{n} {len(p.read_text().splitlines())} lines" for n, p in modules().items()
            if len(p.read_text().splitlines()) > MAX_LINES]


def functions():
    """(module name, function, its qualified name) of every function and method in collapse/."""
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    owner = f"{node.name}." if isinstance(node, ast.ClassDef) else ""
                    yield name, child, owner + child.name


def long_functions() -> list[str]:
    """Functions over MAX_FUNCTION_LINES lines, from the def line to the last, docstring included."""
    return [f"{n}:{fn.lineno}: {q} {fn.end_lineno - fn.lineno + 1} lines" for n, fn, q in functions()
            if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]


def parameter_counts() -> list[str]:
    """Functions of FEW_PARAMETERS' modules over MAX_PARAMETERS parameters (positional, keyword-only,
    *args and **kwargs all count; self and cls do not)."""
    out = []
    for n, fn, q in functions():
        if not n.startswith(FEW_PARAMETERS):
            continue
        a = fn.args
        names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs] + [x.arg for x in (a.vararg, a.kwarg) if x]
        count = len([x for x in names if x not in ("self", "cls")])
        if count > MORE_PARAMETERS.get(f"{n}:{q}", MAX_PARAMETERS):
            out.append(f"{n}:{fn.lineno}: {q} {count} parameters")
    return out


def is_core(name: str) -> bool:
    short = name.removeprefix("collapse.")
    return short.split(".")[0] in CORE


def names_a_modality(text: str) -> bool:
    """A modality word of its own or as one part of a snake_case name (vae_loss, run_t5), any case."""
    return any(part.lower() in MODALITIES for part in re.split(r"[\W_]+", text))


def modality_names() -> list[str]:
    """Core modules' code (not comments or docstrings) naming a modality: identifiers, strings, attributes."""
    out = []
    for name, path in modules().items():
        if not is_core(name):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            text = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value
            elif isinstance(node, ast.Name):
                text = node.id
            elif isinstance(node, ast.Attribute):
                text = node.attr
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                text = node.name
            elif isinstance(node, (ast.arg, ast.keyword)):
                text = node.arg
            if text and names_a_modality(text):
                out.append(f"{name}:{node.lineno}: {text[:60]!r}")
    return out


def lazy_imports() -> list[str]:
    """Imports inside functions without a comment saying they keep torch (or such) out."""
    out = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and not LAZY_REASON.search(lines[node.lineno - 1]):
                    out.append(f"{name}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return sorted(set(out))


def cross_test_imports() -> list[str]:
    """Test modules importing another test module (or conftest): what tests share lives in tests/helpers.py."""
    out = []
    for path in sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            out += [f"tests/{path.name}:{node.lineno}: {n}" for n in names
                    if n.split(".")[0].startswith("test_") or n.split(".")[0] == "conftest"]
    return out


def test_no_import_cycles():
    assert cycles() == []


def test_folders_layer_one_way():
    """With each folder one node the graph has no cycle: the floors of docs/architecture.md."""
    assert cycles(folder_graph()) == []


def test_no_module_over_400_lines():
    assert long_modules() == []


def test_no_function_over_60_lines():
    assert long_functions() == []


def test_no_runner_function_over_6_parameters():
    assert parameter_counts() == []


def test_the_core_names_no_modality():
    assert modality_names() == []


def test_a_modality_word_is_found_inside_snake_case_names_too():
    named = ("vae_loss", "run_T5", "DDPM", "celeba.root", "fid_samples", "gaussian")
    assert [t for t in named if names_a_modality(t)] == list(named)
    assert not any(names_a_modality(t) for t in ("save_data", "evaluate", "favae", "t50", "unetwork"))


def test_imports_inside_functions_say_why():
    assert lazy_imports() == []


def test_tests_share_through_helpers_only():
    assert cross_test_imports() == []


if __name__ == "__main__":
    for title, found in (("cycles", cycles()), ("folder cycles", cycles(folder_graph())), ("long modules", long_modules()),
                         ("long functions", long_functions()), ("many parameters", parameter_counts()),
                         ("modality names in the core", modality_names()), ("lazy imports", lazy_imports()),
                         ("test modules importing test modules", cross_test_imports())):
        print(f"{title}: {len(found)}")
        for f in found:
            print("  ", f)
    sys.exit(0)

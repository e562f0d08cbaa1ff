"""The report's figures of a one-generation grid: the metric against each coefficient (Figures 1-2),
samples of M1 beside the best distilled student (Figure 3) and the test loss during training; and
pyplot and save_figure for every other figure of the report: each figure as a PNG and, beside it, a
PDF for papers (vector lines and text, TrueType fonts). matplotlib loads on the first plot."""
from pathlib import Path

from collapse import storage
from collapse.report.view import Row, SweepView

SEED = "train.seed"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on a cluster node)."""
    import matplotlib   # heavy: only the report's figures need matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt   # heavy: as above
    return plt


def save_figure(fig, path: Path) -> Path:
    """Write `fig` to `path` as PNG and beside it as PDF (each atomically), free it, return the PNG's
    path (with_pdfs adds the PDFs to a list of written files)."""
    import matplotlib   # heavy: as above
    path = Path(path)
    storage.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    with matplotlib.rc_context({"pdf.fonttype": 42}):   # TrueType, not Type 3: what publishers ask for
        storage.atomic_write(path.with_suffix(".pdf"), lambda tmp: fig.savefig(tmp, format="pdf"))
    pyplot().close(fig)
    return path


def with_pdfs(paths: list[Path]) -> list[Path]:
    """`paths` with the PDF that save_figure wrote beside each PNG, right after it."""
    out = []
    for p in map(Path, paths):
        pdf = p.with_suffix(".pdf")
        out += [p, pdf] if p.suffix == ".png" and pdf.is_file() else [p]
    return out


def read_image(path: Path):
    """A PNG as an array, for imshow."""
    import matplotlib.image as mpimg   # heavy: only the report's figures need matplotlib
    return mpimg.imread(path)


def coefficient_sweeps(rows: tuple[Row, ...], columns: dict) -> list[tuple]:
    """Per coefficient, the largest set of rows that moves it alone, the others held at one setting
    (0 in a one-at-a-time grid, the best row's values in the paper's Table 1): (c, held, rows)."""
    found = []
    for c in columns:
        groups: dict = {}
        for r in rows:
            if r.mean is not None and c in r.label:
                held = tuple((o, r.label.get(o, 0.0)) for o in columns if o != c and o in r.label)
                groups.setdefault(held, []).append(r)
        held, members = max(groups.items(), key=lambda kv: len({r.label[c] for r in kv[1]}), default=((), []))
        if len({r.label[c] for r in members}) >= 2:
            found.append((c, held, members))
    return found


def plot_coefficients(view: SweepView) -> Path | None:
    """Figures 1-2: the metric against each coefficient, the others held fixed."""
    plt = pyplot()
    columns = view.columns
    sweeps = coefficient_sweeps(view.rows, columns)
    if not sweeps:
        return None
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4 * len(sweeps), 3.4), squeeze=False)
    for ax, (c, held, members) in zip(axes[0], sweeps):
        xs, ys, es = zip(*sorted((r.label[c], r.mean, r.ci95 or 0.0) for r in members))
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label="student")
        if view.m0.mean is not None:
            ax.axhline(view.m0.mean, color="k", ls="--", lw=1, label="M0 (teacher)")
        if view.m1:
            ax.axhline(view.m1.mean, color="r", ls=":", lw=1, label="M1")
        ax.set_xlabel(columns[c])
        ax.set_ylabel(view.metric.label)
        ax.set_title(", ".join(f"{columns[o]}={v:g}" for o, v in held) or "others 0", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(f"{view.name}: {view.metric.label} against each coefficient, the others held")
    fig.tight_layout()
    path = view.out / f"{view.name}_coefficients.png"
    return save_figure(fig, path)


def plot_samples(view: SweepView) -> Path | None:
    """Figure 3: samples of M1 beside the best distilled student."""
    plt = pyplot()
    m1, columns, root = view.m1, view.columns, view.root
    lower = view.metric.lower_is_better
    distilled = [r for r in view.rows if r is not m1 and r.mean is not None and r.evals]
    if not m1 or not m1.evals or not distilled:
        return None
    best = min(distilled, key=lambda r: r.mean if lower else -r.mean)
    images = [(r.evals[0].get("artifacts") or {}).get("samples", {}).get("path") for r in (m1, best)]
    if not all(images) or not all((root / p).is_file() for p in images):
        return None   # an eval recorded without its sample grid (an older version), or the file is gone
    best_name = ", ".join(f"{columns[k]}={best.label[k]:g}" for k in columns if k in best.label)
    panels = [("M1 (plain student)", m1), ("best distilled: " + best_name, best)]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    for ax, (title, r) in zip(axes, panels):
        ax.imshow(read_image(root / r.evals[0]["artifacts"]["samples"]["path"]), cmap="gray")
        ax.set_title(f"{title}\n{view.metric.label} {r.mean:.2f}", fontsize=9)
        ax.axis("off")
    # margins by hand: tight_layout (and constrained layout) put the two-line titles of image panels
    # with their axes off 5 px above the figure's top edge (matplotlib 3.10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.88, wspace=0.04)
    path = view.out / f"{view.name}_samples.png"
    return save_figure(fig, path)


def curve_models(sweep: dict, by_key: dict, columns: dict) -> list[tuple[str, dict]]:
    """(legend label, training record) of each model of a one-generation grid that has a history:
    the teachers M0 (one per seed), then the students; M1 is the student without distillation."""
    several_seeds = len({p["label"].get(SEED) for p in sweep["config"]["points"]}) > 1
    teachers, students = {}, []
    for p in sweep["config"]["points"]:
        seed = f" seed={p['label'].get(SEED)}" if several_seeds else ""
        teachers.setdefault(p.get("teacher"), "M0" + seed)
        coeffs = {k: v for k, v in p["label"].items() if k != SEED}
        distilled = [f"{columns.get(k, k)}={v:g}" for k, v in coeffs.items() if k in columns and v]
        others = [f"{k}={v}" for k, v in coeffs.items() if k not in columns]
        students.append((p.get("student"), ", ".join(distilled or ["M1"]) + "".join(f" {o}" for o in others) + seed))
    return [(label, by_key[key]) for key, label in [*teachers.items(), *students]
            if key in by_key and (by_key[key].get("metrics") or {}).get("history")]


def plot_curves(view: SweepView) -> Path | None:
    """Test loss against step for each model of a grid, from the training records' metrics.history."""
    models = curve_models(view.sweep, view.by_key, view.columns)
    if not models:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, record in models:
        history = [h for h in record["metrics"]["history"] if "step" in h and "test_loss" in h]
        style = ({"color": "0.45", "ls": "--"} if label.startswith("M0") else
                 {"color": "k", "lw": 2} if label.startswith("M1") else {"lw": 1})
        ax.plot([h["step"] for h in history], [h["test_loss"] for h in history], marker=".", label=label, **style)
    ax.set_xlabel("step")
    ax.set_ylabel("L_M(Test)")
    ax.legend(fontsize=6, ncol=2 if len(models) > 8 else 1)
    ax.set_title(f"{view.name}: test loss during training")
    fig.tight_layout()
    path = view.out / f"{view.name}_curves.png"
    return save_figure(fig, path)

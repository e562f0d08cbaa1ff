"""Figures for papers: every figure of the report has a PDF beside its PNG, and the chains report's strip of
samples across generations has one row per data policy x distillation mode and one column per generation,
each cell the very picture that generation's eval wrote. On a hand-written manifest, in seconds; the
tiny grids of tests/test_pipeline.py and tests/test_generations.py check the same on real runs."""
import numpy as np
import torch

from collapse import manifest
from collapse.report import chains
from collapse.reporting import write_reports
from collapse.tasks.common import save_grid

POLICIES, MODES, GENERATIONS = ("replace", "accumulate"), ("none", "teacher"), 3   # generations 0, 1, 2


def gray(row: int, t: int) -> int:
    """The grey level of cell (row, generation t): distinct for every cell, none black (the grid's padding)."""
    return 30 + 17 * (row * GENERATIONS + t)


def write_chain_sweep(root, seeds=(0,)):
    """A finished chain sweep on the VAE: each eval done, with a real sample grid (save_grid, as the
    VAE's eval writes it) of one grey level per cell; seed 1's pictures are black (not the strip's seed)."""
    points = []
    for row, (policy, mode) in enumerate((p, m) for p in POLICIES for m in MODES):
        for seed in seeds:
            keys = []
            for t in range(GENERATIONS):
                key = f"{policy}-{mode}-{seed}-{t}"
                level = gray(row, t) if seed == 0 else 0
                picture = save_grid(torch.full((4, 1, 8, 8), level / 255), root / "stages" / key / "samples.png")
                manifest.write(root, {"kind": "eval", "key": key, "name": f"eval:{key}", "status": "done",
                                      "metrics": {"test_loss": 100.0 - t - row}, "config": None,
                                      "artifacts": {"samples": {"path": str(picture.relative_to(root))}}})
                keys.append(key)
            points.append({"label": {"generations.data": policy, "generations.distill": mode, "train.seed": seed},
                           "evals": keys, "models": keys})
    sweep = {"kind": "sweep", "key": "sweep-chain", "name": "chain", "status": "done", "ended": 1.0,
             "config": {"grid": "chain", "task": "vae", "plan": "chains", "points": points, "stages": []}}
    manifest.write(root, sweep)
    return sweep


def centre(image: np.ndarray, level: int) -> tuple[float, float] | None:
    """(row, column) median of the pixels of exactly this grey level, None when fewer than 50."""
    ys, xs = np.nonzero(np.all(np.abs(image[..., :3] * 255 - level) < 0.5, axis=-1))
    return (float(np.median(ys)), float(np.median(xs))) if len(ys) >= 50 else None


def test_the_strip_has_a_row_per_policy_and_mode_and_a_column_per_generation_from_the_evals_pictures(tmp_path):
    write_chain_sweep(tmp_path, seeds=(0, 1))
    written = write_reports(tmp_path)
    strip = tmp_path / "report" / "chain_samples_by_generation.png"
    assert strip in written and strip.with_suffix(".pdf") in written

    cells = chains.sample_cells(manifest.read(tmp_path, "sweep-chain"), {r["key"]: r for r in manifest.read_all(tmp_path)},
                                tmp_path)
    assert [label.replace("\n", " | ") for label, _ in cells] == [
        "data=replace | no distillation", "data=replace | distilled from teacher",
        "data=accumulate | no distillation", "data=accumulate | distilled from teacher"]
    assert all(len(row) == GENERATIONS and all(c.parent.name.endswith("-0-" + str(t)) for t, c in enumerate(row))
               for _, row in cells)   # seed 0's pictures, generation t in column t

    import matplotlib.image as mpimg
    image = mpimg.imread(strip)
    found = {(r, t): centre(image, gray(r, t)) for r in range(len(cells)) for t in range(GENERATIONS)}
    assert all(found.values()), [cell for cell, c in found.items() if c is None]   # every picture is in the strip
    for r in range(len(cells)):   # left to right: generation 0, 1, 2
        xs = [found[r, t][1] for t in range(GENERATIONS)]
        assert xs == sorted(xs) and len(set(xs)) == GENERATIONS, (r, xs)
    for t in range(GENERATIONS):   # top to bottom: the rows in order
        ys = [found[r, t][0] for r in range(len(cells))]
        assert ys == sorted(ys) and len(set(ys)) == len(cells), (t, ys)


def test_every_png_of_the_report_has_a_pdf_beside_it_and_the_written_list_names_both(tmp_path):
    write_chain_sweep(tmp_path)
    written = write_reports(tmp_path)
    pngs = sorted((tmp_path / "report").glob("*.png"))
    assert {p.name for p in pngs} == {"chain_by_generation.png", "chain_samples_by_generation.png"}
    for png in pngs:
        pdf = png.with_suffix(".pdf")
        data = pdf.read_bytes()
        assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF") and len(data) > 1000, pdf
        assert b"/Subtype /Type3" not in data   # TrueType fonts (pdf.fonttype 42), as publishers ask
        assert written.index(pdf) == written.index(png) + 1


def test_a_chain_whose_evals_wrote_no_picture_gets_no_strip(tmp_path):
    sweep = write_chain_sweep(tmp_path)
    for record in manifest.read_all(tmp_path):
        if record["kind"] == "eval":
            (tmp_path / record["artifacts"]["samples"]["path"]).unlink()
    written = write_reports(tmp_path)
    assert chains.plot_sample_strip("chain", chains.sample_cells(sweep, {}, tmp_path), tmp_path) is None
    assert not (tmp_path / "report" / "chain_samples_by_generation.png").exists()
    assert tmp_path / "report" / "chain_by_generation.pdf" in written


def test_the_samples_figure_keeps_its_two_line_titles_inside_the_picture(tmp_path):
    """Figure 3 (M1's samples beside the best student's) under its panels' two-line titles: the top rows
    of the PNG are blank and the titles are drawn below them (tight_layout put them 5 px past the top)."""
    from PIL import Image
    from helpers import write_sweep
    write_sweep(tmp_path, "t", {(0.0, 0.0, 0.0): {0: 100.0}, (0.5, 1.0, 1.0): {0: 97.0}})
    for record in manifest.read_all(tmp_path):
        if record["kind"] == "eval":
            picture = save_grid(torch.full((16, 1, 32, 32), 0.5), tmp_path / "stages" / record["key"] / "samples.png")
            manifest.write(tmp_path, {**record, "artifacts": {"samples": {"path": str(picture.relative_to(tmp_path))}}})
    write_reports(tmp_path)
    pixels = np.asarray(Image.open(tmp_path / "report" / "t_samples.png").convert("L"))
    inked = np.flatnonzero((pixels < 128).any(axis=1))   # rows with dark pixels: titles, then the grids
    assert inked[0] >= 3, f"the titles run past the top edge (ink from row {inked[0]})"

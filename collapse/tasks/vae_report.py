"""The VAE's part of the report: what the generic report (collapse/report/) asks of the task, its
primary metric, its coefficient columns and the line saying what one L_M(Test) value is (it follows
train.reduction). Beyond the generic tables and figures, its part is Table 1's claims judged:
<grid>_scorecard.{md,csv} (collapse/tasks/vae_claims.py)."""
import dataclasses
from pathlib import Path

from collapse.report.metric import Primary
from collapse.report.scorecard import write_scorecard
from collapse.report.view import SweepView
from collapse.tasks.vae_claims import CLAIMS
from collapse.tasks.vae_config import VaeTrainConfig

PRIMARY = Primary("test_loss", "L_M(Test)", "lower")   # the metric of the generic table, its label, which way is better
UNITS = {   # train.reduction -> what one L_M(Test) value is
    "pixel": "nats per pixel (L_VAE / 1,024 pixels; train.reduction = pixel), the paper's per-element "
             "kind of value, though not its level (our M0 is above its M1): compare ranks, signs and %",
    "sum": "nats per image (L_VAE summed over the 1,024 pixels; train.reduction = sum); the paper's "
           "values are per pixel, so compare its ranks, signs and % figures, not its values",
    "element": "BCE averaged over pixels + KL averaged over latents (train.reduction = element), "
               "not the paper's scale"}
# What records older than train.reduction computed: the default its added_later() mark keeps out of keys.
OLDER_REDUCTION = next(f.metadata["added_later"] for f in dataclasses.fields(VaeTrainConfig) if f.name == "reduction")


def table_notes(view: SweepView) -> tuple[str, str | None]:
    """For the generic table: nothing after its heading, and the line on units."""
    return "", unit_line(view.sweep, view.by_key)


def unit_line(sweep: dict, by_key: dict) -> str | None:
    """What one value is, from the train.reduction of the sweep's stage records (known before any eval ends)."""
    records = [by_key.get(p.get(role)) for p in sweep["config"]["points"] for role in ("eval", "student", "teacher")]
    reductions = sorted({(rec["config"].get("train") or {}).get("reduction", OLDER_REDUCTION)
                         for rec in records if rec and isinstance(rec.get("config"), dict)})
    if not reductions:
        return None
    if len(reductions) > 1:
        return f"Unit: rows mix train.reduction = {', '.join(reductions)}; their values are not comparable."
    return f"Unit: {UNITS.get(reductions[0], f'train.reduction = {reductions[0]}')}."


def write_report(view: SweepView) -> list[Path]:
    """Table 1's claims judged (<name>_scorecard.*); the generic table, plots and curves are the rest."""
    return write_scorecard(view, CLAIMS)

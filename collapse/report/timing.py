"""<grid>_timing.md / .csv: per stage kind, what the launches estimated beside what the stages measured.

The estimate of each stage is the one its launch printed (collapse/dryrun.py estimate(), kept in the
sweep record as `estimate`); what was measured is each record's `measured` (collapse/measured.py).
A stage done before any launch estimated it (an older results root) counts on the measured side only.
"""
import statistics
from pathlib import Path

from collapse.report.tables import md_table, write_csv, write_text

HEADER = ["kind", "stages", "estimated h", "measured h", "measured / estimated", "device-hours", "device",
          "items/s (median)", "peak host MiB (max)", "estimated from"]


def kind_rows(sweep: dict, by_key: dict) -> list[list]:
    """One row per stage kind of the sweep that has a measured record."""
    estimate = sweep.get("estimate") or {}
    kinds: dict = {}
    for key in sweep["config"].get("stages", []):
        record = by_key.get(key)
        if record is None or record.get("status") not in ("done", "partial") or "measured" not in record:
            continue
        kinds.setdefault(record["kind"], []).append((record["measured"], estimate.get(key)))
    rows = []
    for kind, seen in kinds.items():
        measured = sum(m["seconds"] for m, _ in seen) / 3600
        estimated = [e for _, e in seen if _estimated(e)]
        est_h = sum(e["seconds"] for e in estimated) / 3600 if estimated else None
        both = sum(m["seconds"] for m, e in seen if _estimated(e)) / 3600
        rates = [m["items_per_s"] for m, _ in seen if m.get("items_per_s") and not m.get("resumed")]
        rows.append([kind, len(seen), _h(est_h), _h(measured),
                     f"{both / est_h:.2f}" if est_h else "", _h(sum(m["device_s"] for m, _ in seen) / 3600),
                     ", ".join(sorted({m["device"] for m, _ in seen})),
                     f"{statistics.median(rates):.4g}" if rates else "",
                     f"{max(m['peak_rss_mib'] for m, _ in seen):.0f}",
                     "; ".join(sorted({e["source"] for _, e in seen if e is not None}))
                     or "no launch estimate recorded"])
    return rows


def _estimated(estimate: dict | None) -> bool:
    """The launch estimated the stage (dryrun.estimate says 'no estimate: ...' where it could not)."""
    return estimate is not None and not estimate["source"].startswith("no estimate")


def _h(hours: float | None) -> str:
    return "" if hours is None else f"{hours:.3g}"


def write_timing(name: str, sweep: dict, by_key: dict, out: Path) -> list[Path]:
    rows = kind_rows(sweep, by_key)
    if not rows:
        return []
    lines = [f"# {name}: time, estimated and measured", "",
             "Per stage kind: the hours each launch estimated for the stages it ran (its dry run's figures) "
             "beside the hours the stages measured (their own work, not the queue or the interpreter's start); "
             "device-hours are GPU-hours on a GPU and core-hours on a CPU.", "",
             *md_table(HEADER, rows)]
    return [write_csv(out / f"{name}_timing.csv", HEADER, rows), write_text(out / f"{name}_timing.md", lines)]

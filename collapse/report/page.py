"""report/index.html: the whole report as one self-contained page that opens offline in a browser.

Built from the files the report has just written and the records: what went wrong first (the failed and
blocked stages: name, last error line, log, the command that reruns them), then per grid its stages, every
table the report wrote (the .md files, rendered; the paper's claims judged in <grid>_scorecard.md), every
figure (PNG, embedded as base64 data: URIs, its PDF linked beside it), the time per stage kind estimated
against measured (collapse/report/timing.py) and the provenance (commit, dirty flag, code snapshot,
versions, host and device). The facts are collapse/report/digest.py's, so page, digest.txt and
sweeps/status.py agree. A Content-Security-Policy in the page forbids the browser any request: nothing
leaves the file (links to the .csv and .pdf beside it load only when clicked).
"""
import base64
import html
import re
import time
from pathlib import Path

from collapse.report.digest import Outcome, hours, summary
from collapse.report.tables import write_text
from collapse.report.timing import HEADER as TIME_HEADER

POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 1.5em 3em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ccc; margin-top: 2em; }
h3 { margin-top: 1.6em; } .muted { color: #666; } code { background: #f3f3f3; padding: 0 0.2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } tr:nth-child(even) td { background: #fafafa; }
.bad { border-left: 6px solid #c62828; background: #fff4f4; padding: 0.4em 1em; }
.good { border-left: 6px solid #2e7d32; background: #f3fbf3; padding: 0.4em 1em; }
.state-failed, .state-cancelled, .state-blocked { color: #c62828; font-weight: 600; }
.state-done { color: #2e7d32; } pre { background: #f6f6f6; padding: 0.5em; white-space: pre-wrap; word-break: break-all; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; } figcaption { font-size: 13px; color: #555; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def inline(text: str) -> str:
    """Markdown's inline code and bold, on escaped text."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def table(header: list, rows: list, raw: bool = False) -> str:
    cell = (lambda c: str(c)) if raw else inline
    return ("<table><tr>" + "".join(f"<th>{inline(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>")


def markdown(text: str) -> str:
    """The markdown the report writes (collapse/report/tables.py md_table, headings, paragraphs, lists) as
    HTML; headings one level down (a file's '#' is a section of its grid's)."""
    out, para, rows, items = [], [], [], []

    def flush():
        if para:
            out.append("<p>" + "<br>".join(inline(line) for line in para) + "</p>")   # the report's lines are its own
        if rows:
            body = [r for r in rows[1:] if not re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*", r)]
            out.append(table(cells(rows[0]), [cells(r) for r in body]))
        if items:
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
        para.clear(), rows.clear(), items.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            if para or items:
                flush()
            rows.append(line)
            continue
        if rows:
            flush()
        heading = re.match(r"(#{1,5}) (.*)", line)
        if heading:
            flush()
            level = min(len(heading.group(1)) + 2, 6)
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif re.match(r"\s*[-*] ", line):
            if para:
                flush()
            items.append(re.sub(r"\s*[-*] ", "", line, count=1))
        elif not line.strip():
            flush()
        else:
            para.append(line.strip())
    flush()
    return "\n".join(out)


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def grid_of(path: Path, grids: list[str]) -> str | None:
    """The grid a report file belongs to: the longest grid name its file name starts with ('vae_coeffs_key'
    before 'vae_coeffs'); None for the root's own files (results.csv)."""
    named = [g for g in grids if path.name.startswith(g) and path.name[len(g):len(g) + 1] in (".", "_")]
    return max(named, key=len) if named else None


def figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    pdf = path.with_suffix(".pdf")
    also = f' · <a href="{esc(pdf.name)}">PDF</a>' if pdf.is_file() else ""
    return (f'<figure><img alt="{esc(path.name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(path.name)}{also}</figcaption></figure>")


def failures(found: list[Outcome]) -> str:
    bad = [(o, f) for o in found for f in o.failures + o.blocked]
    if not bad:
        return '<div class="good">No stage failed or was blocked.</div>'
    rows = [[f'<span class="state-{f.state}">{esc(f.state)}</span>', esc(o.grid), esc(f.name), esc(f.error),
             f"<code>{esc(f.log)}</code>"] for o, f in bad]
    again = "".join(f"<p>Rerun {esc(o.grid)}'s failed and blocked stages (what is done is kept):</p>"
                    f"<pre>{esc(o.next_command)}</pre>" for o in found if o.failures or o.blocked)
    return ('<div class="bad">' + table(["state", "grid", "stage", "last error line", "log"], rows, raw=True)
            + again + "</div>")


def stage_table(out: Outcome) -> str:
    blocked = {f.name for f in out.blocked}
    rows = []
    for r in out.rows:
        state = "blocked" if r.name in blocked else r.state
        rows.append([esc(r.name), esc(r.kind), f'<span class="state-{esc(state)}">{esc(state)}</span>', esc(r.job),
                     esc(r.elapsed), esc(r.note)])
    return table(["stage", "kind", "state", "job", "elapsed", "log / reason"], rows, raw=True)


def time_block(out: Outcome) -> str:
    if not out.timing:
        return "<p class='muted'>No stage of this grid has measured its time yet.</p>"
    h = hours(out.timing)
    said = (f"{h['measured']:.3g} h measured against {h['estimated']:.3g} h estimated" if h["estimated_kinds"]
            else f"{h['measured']:.3g} h measured; no launch estimate to set it against")
    return (f"<p>Stage hours, all kinds: {said}; {h['device']:.3g} device-hours (GPU-hours on a GPU, core-hours on a "
            "CPU). Measured is each stage's own work, not the queue or the interpreter's start.</p>"
            + table(TIME_HEADER, out.timing))


def provenance(out: Outcome, by_key: dict) -> str:
    """Which code, versions and machines made the grid's stages: one row per distinct value, with its count."""
    records = [by_key[k] for k in out.sweep["config"].get("stages", []) if k in by_key]
    rows = []

    def count(label, values):
        seen: dict = {}
        for v in values:
            if v not in (None, ""):
                seen[str(v)] = seen.get(str(v), 0) + 1
        rows.append([label, "; ".join(f"{v} ({n} stage{'s' * (n > 1)})" for v, n in seen.items()) or "not recorded"])

    count("git commit", (r.get("git_commit") for r in records))
    count("uncommitted changes (dirty)", (r.get("git_dirty") for r in records if "git_dirty" in r))
    count("code snapshot", (r.get("code") for r in records))
    count("host", (r.get("host") for r in records))
    count("device", ((r.get("cuda") or {}).get("device") or (r.get("measured") or {}).get("device")
                     for r in records if r.get("cuda") or r.get("measured")))
    count("SLURM job", (r.get("slurm_job_id") for r in records))
    versions: dict = {}
    for r in records:
        for name, v in (r.get("versions") or {}).items():
            versions.setdefault(name, {}).setdefault(str(v), 0)
            versions[name][str(v)] += 1
    def listed(seen: dict) -> str:   # one version, or each with its count where the stages differ
        return next(iter(seen)) if len(seen) == 1 else " / ".join(f"{v} ({n})" for v, n in seen.items())
    rows.append(["versions", " · ".join(f"{name} {listed(seen)}" for name, seen in
                                        sorted(versions.items(), key=lambda kv: kv[0].lower())) or "not recorded"])
    return table(["what", "value (stages)"], rows)


def grid_section(out: Outcome, files: list[Path], by_key: dict) -> str:
    tables = [p for p in files if p.suffix == ".md" and not p.name.endswith("_timing.md")]
    tables.sort(key=lambda p: (p.name.endswith("_scorecard.md"), p.name))   # the grid's table, then the paper's claims
    figures = [p for p in files if p.suffix == ".png"]
    data = [p for p in files if p.suffix in (".csv", ".parquet", ".pdf")]
    part = [f'<h2 id="{esc(out.grid)}">{esc(out.grid)}</h2>',
            f"<p><strong>{esc(summary(out))}</strong> <span class='muted'>(sweep {esc(out.sweep['key'])})</span></p>"]
    for p in tables:   # the file's own heading heads its section
        text = p.read_text(errors="replace")
        first, _, rest = text.partition("\n")
        title, text = (first[2:], rest) if first.startswith("# ") else (p.stem, text)
        part.append(f"<h3>{inline(title)} <span class='muted'>({esc(p.name)})</span></h3>")
        part.append(markdown(text))
    if figures:
        part += ["<h3>Figures</h3>", *(figure(p) for p in figures)]
    part += ["<h3>Time, estimated and measured</h3>", time_block(out),
             "<h3>Stages</h3>", stage_table(out), "<h3>Provenance</h3>", provenance(out, by_key)]
    if data:
        part.append("<p class='muted'>Beside this page: " + ", ".join(
            f'<a href="{esc(p.name)}">{esc(p.name)}</a>' for p in data) + "</p>")
    return "\n".join(part)


def render(root: Path, written: list[Path], found: list[Outcome], by_key: dict) -> str:
    grids = [o.grid for o in found]
    files = [Path(p) for p in written if Path(p).is_file()]
    own = [p for p in files if grid_of(p, grids) is None and p.name not in ("index.html", "digest.txt")]
    body = [f"<h1>collapse report: {esc(root)}</h1>",
            f"<p class='muted'>Written {esc(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}; "
            "one file, nothing loaded from outside it.</p>",
            "<ul>" + "".join(f'<li><a href="#{esc(o.grid)}">{esc(summary(o))}</a>; '
                             f'{hours(o.timing)["measured"]:.3g} stage-hours measured</li>' for o in found) + "</ul>",
            "<h2 id='failed'>Failed or blocked stages</h2>", failures(found)]
    body += [grid_section(o, [p for p in files if grid_of(p, grids) == o.grid], by_key) for o in found]
    if own:
        body.append("<h2>Every stage record</h2><p>" + ", ".join(
            f'<a href="{esc(p.name)}">{esc(p.name)}</a>' for p in own) + " (one row per stage record)</p>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{POLICY}\">"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<link rel='icon' href='data:,'>"
            f"<title>collapse report: {esc(root.name)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_page(root, written: list[Path], found: list[Outcome], records: list[dict]) -> list[Path]:
    """<root>/report/index.html from the report's files `written` and the grids' outcomes (digest.outcomes)."""
    root = Path(root)
    by_key = {r["key"]: r for r in records}
    return [write_text(root / "report" / "index.html", [render(root, written, found, by_key)])]

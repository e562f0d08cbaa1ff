"""report/index.html and report/digest.txt (issue 31, items 1 and 2) after a real toy grid with one stage made
to fail: the page names every stage, embeds every figure, shows the failure with its last error line, log and
relaunch command, and renders in headless Chromium with every image decoded and nothing requested from outside
the file; the digest says the same and the local executor prints it when it ends."""
import base64
import html
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
sys.path.insert(0, str(REPO))

from collapse import manifest  # noqa: E402
from helpers import toy_env  # noqa: E402

GRID = "experiment: toy\nrows:\n  - {distill.lam: 0.0}\n  - {distill.lam: 1.0}\n  - {distill.lam: 1.0e+39}\n"
# lam 1e39: beyond float32, the distilled loss is inf at the first step (DivergedError), its eval blocked


def launch(env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "sweeps" / "launch.py"), *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("page")
    (base / "grids").mkdir()
    (base / "grids" / "toy_fail.yaml").write_text(GRID)
    root = base / "r"
    env = toy_env(base / "grids")
    out = launch(env, "grid=toy_fail", "train.threads=1", "cluster=local", f"results_root={root}", "notify=me@lab.org")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]   # one stage failed
    records = [r for r in manifest.read_all(root) if r.get("kind") not in ("sweep", None)]
    (failed,) = [r for r in records if r["status"] == "failed"]
    return root, env, out, failed, records


class Page(HTMLParser):
    """Every image's src and every other reference (href, src, srcset, url(...) in style) of a page."""
    def __init__(self):
        super().__init__()
        self.images, self.links, self.loads, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "a":
            self.links.append(a.get("href", ""))
        elif tag in ("link", "script", "iframe", "source", "video", "audio", "object", "embed"):
            self.loads.append(a.get("href") or a.get("src") or a.get("data") or "")
        if "srcset" in a or "url(" in (a.get("style") or ""):
            self.loads.append(str(a))

    def handle_data(self, data):
        self.text.append(data)


def parsed(root: Path) -> Page:
    page = Page()
    page.feed((root / "report" / "index.html").read_text())
    return page


def test_the_local_executor_prints_the_digest_and_says_notify_sends_no_mail_here(failed_run):
    root, _, out, failed, _ = failed_run
    assert "notify=me@lab.org: the local executor sends no mail" in out.stdout
    digest = (root / "report" / "digest.txt").read_text()
    assert out.stdout.rstrip().endswith(digest.rstrip()), out.stdout[-2000:]   # printed last, as written


def test_the_digest_names_the_failure_its_last_error_line_log_and_the_command_that_reruns_it(failed_run):
    root, env, _, failed, records = failed_run
    text = (root / "report" / "digest.txt").read_text()
    assert failed["error"].startswith("DivergedError: loss is inf at step 0")
    done = sum(r["status"] == "done" for r in records if r["kind"] != "report")
    assert f"toy_fail: {done} of 9 stages done, 1 failed, 1 blocked" in text and done == 7, text
    assert f"failed   {failed['name']}: {failed['error']}" in text
    assert f"log: {root / failed['log']}" in text
    assert "blocked  eval:student[lam=1e+39,seed=0]: not run: an input failed (student[lam=1e+39,seed=0])" in text
    assert "h measured" in text and "device-hours" in text
    (command,) = [line.split("next: ", 1)[1] for line in text.splitlines() if "next: " in line]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "sweeps/launch.py"] and f"results_root={root}" in argv
    assert "notify=me@lab.org" in argv
    # the exact command: run as a dry run, it plans this sweep with the failed student, its eval and the report to run
    again = launch(env, *argv[2:], "dry_run=true")
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert "10 stages: 7 done, 0 running elsewhere, 3 to run" in again.stdout, again.stdout


def test_the_page_names_every_stage_embeds_every_figure_and_shows_failure_time_and_provenance(failed_run):
    root, _, _, failed, records = failed_run
    page = parsed(root)
    text = html.unescape("".join(page.text))
    for r in records:
        assert r["name"] in text, r["name"]
    assert "eval:student[lam=1e+39,seed=0]" in text   # the blocked stage has no record: named from its spec
    pngs = sorted((root / "report").glob("*.png"))
    assert len(pngs) >= 2   # the coefficients and the curves
    embedded = sorted(base64.b64decode(src.split(",", 1)[1]) for src in page.images)
    assert embedded == sorted(p.read_bytes() for p in pngs)   # every figure, byte for byte
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert page.loads == ["data:,"]   # the icon; nothing else is loaded
    assert all(h.startswith("#") or "/" not in h and (root / "report" / h).is_file() for h in page.links), page.links
    assert failed["error"] in text and str(root / failed["log"]) in text
    digest = (root / "report" / "digest.txt").read_text()
    (command,) = [line.split("next: ", 1)[1] for line in digest.splitlines() if "next: " in line]
    assert command in text
    for table in ("toy_fail.md",):   # every table the report wrote, rendered
        assert table in text
    assert "| model |" not in text and "NLL" in text   # a markdown table became an HTML one
    for kind in ("teacher", "synth", "student", "eval"):   # the time block: one row per kind that measured
        assert f"{kind}" in text
    assert "measured h" in text and "device-hours" in text
    assert failed["git_commit"] in text and failed["versions"]["torch"] in text and "cpu" in text


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def serve_alone(html_text: str, folder: Path):
    """A local HTTP server of `folder` holding only index.html; every path asked for is logged."""
    folder.mkdir()
    (folder / "index.html").write_text(html_text)
    asked = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(folder), **k)

        def log_message(self, *a):
            asked.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, asked


def render(html_text: str, folder: Path, *args) -> tuple[str, list]:
    """(the DOM after load, the paths the browser asked the server for), in headless Chromium with every host
    but the server's unresolvable."""
    server, asked = serve_alone(html_text, folder)
    try:
        out = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              "--disable-background-networking", "--disable-component-update",
                              "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                              f"--user-data-dir={folder}-profile", "--virtual-time-budget=10000", *args,
                              "--dump-dom", f"http://127.0.0.1:{server.server_address[1]}/index.html"],
                             capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, asked


# Appended for the image check only: it reads each <img> once the page has loaded. The page's policy forbids
# scripts (it has none), so the copy's policy also allows inline script; images stay data: only.
CHECK = ("<script>addEventListener('load', () => { const i = [...document.images]; document.title = "
         "JSON.stringify({decoded: i.filter(x => x.complete && x.naturalWidth > 0).length, images: i.length}); })"
         "</script>")


def with_check(text: str) -> str:
    from collapse.report.page import POLICY
    return text.replace(POLICY, POLICY + "; script-src 'unsafe-inline'").replace("</body>", CHECK + "</body>")


def title(dom: str) -> dict:
    return json.loads(html.unescape(dom.split("<title>", 1)[1].split("</title>", 1)[0]))


def test_the_page_renders_in_headless_chromium_every_image_decoded_nothing_requested_outside(failed_run, tmp_path):
    if chromium() is None:
        pytest.skip("no Chromium here (.ci/run installs Debian's chromium; or apt-get install chromium)")
    root = failed_run[0]
    text = (root / "report" / "index.html").read_text()
    n = len(sorted((root / "report").glob("*.png")))
    dom, asked = render(text, tmp_path / "as_written")
    assert asked == ["/index.html"], asked                       # the page as written asks for nothing else
    assert "toy_fail" in dom and "DivergedError" in dom
    dom, asked = render(with_check(text), tmp_path / "checked")
    assert title(dom) == {"decoded": n, "images": n} and asked == ["/index.html"], (title(dom), asked)
    # the check fails where it should: a figure named by file rather than embedded is asked for, and not decoded
    first = text.split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]
    broken = text.replace(f"data:image/png;base64,{first}", "toy_fail_curves.png", 1)
    dom, asked = render(with_check(broken).replace("img-src data:", "img-src data: 'self'"), tmp_path / "broken")
    assert title(dom) == {"decoded": n - 1, "images": n} and "/toy_fail_curves.png" in asked, (title(dom), asked)

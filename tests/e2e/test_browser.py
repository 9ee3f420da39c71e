"""Every rendered HTML page, loaded in headless Chromium with the network blocked.

Pages: the front page (one real family report executed by the runner on smoke data, one
synthetic family, the rest not run), every stage's report executed by the runner under the
smoke profile (shared with the end-to-end tests), and a ``dvc plots show`` page made with the
offline template. For each: every image loaded (``naturalWidth > 0``), no figure appears
twice, the expected headings and tables are there, no console error, no request left the
machine, and a full-page screenshot is saved under the test's tmp dir. The front page's
claims table is sorted and filtered by clicking, as a reader would.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them when run as
root); without them the tests skip locally and fail in CI (``$CI`` set).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

from _reports_fixtures import SMOKE_FAMILY, claim, dvc_plots_page, make_stage, png, smoke_reports
from trustlab.stages import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL = "sudo apt-get install -y chromium chromium-driver"
pytestmark = [pytest.mark.browser, pytest.mark.e2e]

# Everything but local files and inline data is refused at three levels: the DevTools network
# block list, a host resolver that resolves nothing, and a proxy to a closed port.
BLOCKED = ["http://*", "https://*", "ws://*", "wss://*", "ftp://*"]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "chrome-untrusted:", "devtools:")  # browser-internal pages


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        msg = f"headless Chromium not found ({', '.join(missing)}); install it with: {INSTALL}"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI must run the browser test: `make test` installs them as root)")
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://127.0.0.1:9",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": BLOCKED})
        yield driver
    finally:
        driver.quit()


def _requests(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def load(driver, path: Path, shot: Path) -> dict:
    """Open ``path`` and return what the page shows; saves a full-page screenshot to ``shot``."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser"), driver.get_log("performance")  # reading empties the buffers
    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"
        )
    )
    page = driver.execute_script("""
        const text = e => e.textContent.replace(/\\u00b6/g, '').trim();
        return {
          images: Array.from(document.images).map(i => ({src: i.src.slice(0, 40), width: i.naturalWidth})),
          image_sources: Array.from(document.images).map(i => i.src),
          headings: Array.from(document.querySelectorAll('h1, h2, h3')).map(text),
          tables: Array.from(document.querySelectorAll('table'))
                       .map(t => ({id: t.id, rows: t.querySelectorAll('tbody tr').length})),
          height: Math.max(document.body.scrollHeight, document.documentElement.scrollHeight),
          visible_text: document.body.innerText,
          formulas: document.querySelectorAll('math').length,
        };""")
    shot.parent.mkdir(parents=True, exist_ok=True)
    png = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    shot.write_bytes(base64.b64decode(png["data"]))
    page["image_digests"] = [hashlib.sha256(src.encode()).hexdigest() for src in page.pop("image_sources")]
    page["console"] = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    page["remote_requests"] = [u for u in _requests(driver) if not u.startswith(LOCAL_SCHEMES)]
    return page


def assert_clean(page: dict, shot: Path, min_images: int = 1) -> None:
    assert len(page["images"]) >= min_images, page["images"]
    broken = [i for i in page["images"] if i["width"] <= 0]
    assert not broken, f"images that did not load: {broken}"
    repeated = [n for n in collections.Counter(page["image_digests"]).values() if n > 1]
    assert not repeated, f"{len(repeated)} figure(s) appear more than once on the page"
    assert not page["console"], f"console errors: {page['console']}"
    assert not page["remote_requests"], f"the page tried to reach the network: {page['remote_requests']}"
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[0] >= 500 and pixels.std() > 0.01, "the screenshot is blank"


# -- the pages -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pages(tmp_path_factory):
    """A reports/ tree: the smoke family report executed by the runner, a synthetic calibration
    report, the others missing; and the front page rendered over it."""
    smoke = smoke_reports(tmp_path_factory)
    reports = tmp_path_factory.mktemp("browser") / "reports"
    import shutil

    shutil.copytree(smoke.reports / SMOKE_FAMILY, reports / SMOKE_FAMILY)
    make_stage(
        reports,
        "calibration",
        figures=("reliability_ce",),
        claims=[
            claim("calibration", "supported", claim="focal loss lowers ECE", paper_effect=-0.02),
            claim("calibration", "not supported", metric="nll", claim="label smoothing lowers NLL"),
            claim("calibration", "inconclusive", metric="brier", claim="MMCE lowers Brier", unit="items"),
            claim("calibration", "not evaluated", metric="acc", claim="the calibrator keeps accuracy"),
        ],
    )
    env = {**os.environ, "TRUSTLAB_WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [
            sys.executable,
            "pipelines/render_front_page.py",
            "--reports-dir",
            str(reports),
            "--data-dir",
            str(smoke.data),
            "--profile",
            "smoke",
            "--quiet",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return reports


N_SYNTHETIC_CLAIMS = 4  # the calibration rows of `pages`
CLAIM_HEADERS = ["Family", "Claim", "Source paper", "Metric", "Unit", "n", "Effect [95% CI]", "Test", "p", "MDE",
                 "Paper effect", "Power", "Verdict", "Base-model seed"]  # fmt: skip


def test_the_checks_can_fail(browser, tmp_path):
    """A remote image is refused (broken image, request recorded) and a script error reaches
    the console log: the clean pages below are clean for a reason."""
    remote = tmp_path / "remote.html"
    remote.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><h1>x</h1>'
        '<img src="https://example.com/a.png"></body></html>'
    )
    page = load(browser, remote, tmp_path / "remote.png")
    assert page["images"] == [{"src": "https://example.com/a.png", "width": 0}]
    assert page["remote_requests"] == ["https://example.com/a.png"]
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><h1>y</h1>'
        "<script>notDefinedAnywhere();</script></body></html>"
    )
    page = load(browser, broken, tmp_path / "broken.png")
    assert any("notDefinedAnywhere" in e["message"] for e in page["console"]), page["console"]
    # the same figure twice is caught
    src = "data:image/png;base64," + base64.b64encode(png(tmp_path / "one.png").read_bytes()).decode()
    twice = tmp_path / "twice.html"
    twice.write_text(f'<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><h1>z</h1>'
                     f'<img src="{src}"><img src="{src}"></body></html>')  # fmt: skip
    page = load(browser, twice, tmp_path / "twice.png")
    with pytest.raises(AssertionError, match="appear more than once"):
        assert_clean(page, tmp_path / "twice.png", min_images=2)


def test_front_page_renders_offline(browser, pages, tmp_path):
    shot = tmp_path / "front_page.png"
    page = load(browser, pages / "index.html", shot)
    assert_clean(page, shot, min_images=2)  # the calibration and smoke family headline figures
    for heading in (
        "trustlab results",
        "Reports",
        "Claims",
        "Headline numbers",
        "Headline figures",
        "Weights & Biases",
        "Provenance",
        "Code",
        "Stage wall times",
        "dvc.lock",
        "Data manifests",
        "Software and machine",
    ):
        assert heading in page["headings"], (heading, page["headings"])
    tables = {t["id"]: t["rows"] for t in page["tables"] if t["id"]}
    smoke_claims = len(json.loads((pages / SMOKE_FAMILY / "metrics.json").read_text())["claims"])
    assert tables["claims-table"] == N_SYNTHETIC_CLAIMS + smoke_claims
    assert tables["reports-table"] == 6 and tables["versions-table"] >= 7 and tables["manifests-table"] >= 1
    assert (
        browser.execute_script(
            "return Array.from(document.querySelectorAll('#reports-table tbody tr'))"
            ".filter(r => r.textContent.includes('not run')).length"
        )
        == 4
    )  # 00_data, 01_base_model, noisefit, error_detection
    # the report links point at files that exist
    for href in browser.execute_script(
        "return Array.from(document.querySelectorAll('a[href$=\"index.html\"]')).map(a => a.getAttribute('href'))"
    ):
        assert (pages / href).is_file(), href


def test_front_page_claims_sort_and_colours(browser, pages, tmp_path):
    load(browser, pages / "index.html", tmp_path / "front_page_sorted.png")
    headers = browser.execute_script(
        "return Array.from(document.querySelectorAll('#claims-table th')).map(th => th.textContent.trim())"
    )
    assert headers == CLAIM_HEADERS

    def column(name: str) -> list[str | None]:
        return browser.execute_script(
            "return Array.from(document.querySelectorAll('#claims-table tbody tr'))"
            f".map(r => r.cells[{headers.index(name)}].getAttribute('data-sort'))"
        )

    def click(header: str) -> None:
        browser.execute_script(
            "Array.from(document.querySelectorAll('#claims-table th'))"
            ".find(th => th.textContent.trim() === arguments[0]).click()",
            header,
        )

    click("Effect [95% CI]")
    effects = [float(x) for x in column("Effect [95% CI]") if x]
    assert effects == sorted(effects) and len(effects) >= 3
    click("Effect [95% CI]")
    assert [float(x) for x in column("Effect [95% CI]") if x] == sorted(effects, reverse=True)
    click("p")
    ps = [float(x) for x in column("p") if x]
    assert ps == sorted(ps) and len(ps) >= 3
    click("Verdict")
    assert column("Verdict") == sorted(column("Verdict"))
    colours = browser.execute_script("""
        const bg = c => getComputedStyle(document.querySelector('#claims-table td.' + c)).backgroundColor;
        return {ok: bg('v-supported'), bad: bg('v-not'), mid: bg('v-inconclusive'), none: bg('v-none')};""")
    rgb = {k: [int(x) for x in re.findall(r"\d+", v)[:3]] for k, v in colours.items()}
    assert rgb["ok"][1] > rgb["ok"][0] and rgb["bad"][0] > rgb["bad"][1] and len({tuple(v) for v in rgb.values()}) == 4
    # the new columns carry values on the synthetic rows
    units = browser.execute_script(
        "return Array.from(document.querySelectorAll('#claims-table tbody tr[data-family=\"calibration\"]'))"
        f".map(r => [r.cells[{headers.index('Unit')}].textContent, r.cells[{headers.index('Test')}].textContent,"
        f" r.cells[{headers.index('Power')}].textContent])"
    )
    assert sorted(u[0] for u in units) == ["items", "seeds", "seeds", "seeds"]
    assert ["seeds", "paired t-test", "powered"] in units and ["seeds", "none", "not evaluated"] in units


def test_front_page_claims_filters(browser, pages, tmp_path):
    load(browser, pages / "index.html", tmp_path / "front_page_filtered.png")

    def choose(select_id: str, value: str) -> None:
        browser.execute_script(
            "const s = document.getElementById(arguments[0]); s.value = arguments[1];"
            "s.dispatchEvent(new Event('change'));",
            select_id,
            value,
        )

    def visible() -> list[tuple[str, str]]:
        return browser.execute_script(
            "return Array.from(document.querySelectorAll('#claims-table tbody tr'))"
            ".filter(r => r.offsetParent !== null)"
            ".map(r => [r.getAttribute('data-family'), r.getAttribute('data-verdict')])"
        )

    total = len(visible())
    choose("filter-family", "calibration")
    assert [f for f, _ in visible()] == ["calibration"] * N_SYNTHETIC_CLAIMS
    choose("filter-verdict", "supported")
    assert visible() == [["calibration", "supported"]]
    count = browser.execute_script("return document.querySelector('[data-count=\"claims-table\"]').textContent")
    assert count == f"1 of {total} rows shown"
    choose("filter-family", "")
    assert all(v == "supported" for _, v in visible())
    choose("filter-verdict", "")
    assert len(visible()) == total


def test_family_report_renders_offline(browser, pages, tmp_path):
    report = pages / SMOKE_FAMILY / "index.html"
    shot = tmp_path / f"{SMOKE_FAMILY}.png"
    page = load(browser, report, shot)
    n_figures = len(list((pages / SMOKE_FAMILY / "figures").glob("*.png")))
    assert_clean(page, shot, min_images=n_figures)
    nb = jupytext.read(ROOT / "notebooks" / f"{SMOKE_FAMILY}.py")
    expected = [
        m.group(1).strip()
        for c in nb.cells
        if c.cell_type == "markdown"
        for m in re.finditer(r"^#{1,2} (.+)$", c.source, re.M)
    ]
    shown = " | ".join(page["headings"])
    for heading in expected:
        assert re.sub(r"[`$\\]", "", heading)[:25] in re.sub(r"[`$\\]", "", shown), (heading, page["headings"])
    assert len(page["tables"]) >= 3 and all(t["rows"] > 0 for t in page["tables"])
    # the runner turned progress bars off: no bar text and no widget in the executed report
    executed = (pages / SMOKE_FAMILY / f"{SMOKE_FAMILY}.ipynb").read_text()
    assert "it/s]" not in executed and "application/vnd.jupyter.widget-view+json" not in executed


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_every_report_renders_offline(browser, executed_report, name, tmp_path):
    """Each stage's rendered report (data, base model, the four families), executed by the
    runner under the smoke profile: images load, the notebook's headings and its tables are
    there, nothing reaches the network, no console error."""
    reports, proc = executed_report(name)
    assert proc.returncode == 0, proc.stderr[-4000:]
    shot = tmp_path / f"{name}.png"
    page = load(browser, reports / "index.html", shot)
    assert_clean(page, shot, min_images=len(list((reports / "figures").glob("*.png"))) or 1)
    nb = jupytext.read(ROOT / "notebooks" / f"{name}.py")
    expected = [m.group(1).strip() for c in nb.cells if c.cell_type == "markdown"
                for m in re.finditer(r"^#{1,2} (.+)$", c.source, re.M)]  # fmt: skip
    shown = re.sub(r"[`$\\]", "", " | ".join(page["headings"]))
    for heading in expected:
        assert re.sub(r"[`$\\]", "", heading)[:25] in shown, (heading, page["headings"])
    assert page["tables"] and all(t["rows"] > 0 for t in page["tables"]), page["tables"]
    # formulas are rendered (MathML), never shown as raw TeX
    assert "$$" not in page["visible_text"], "raw $$ TeX in the visible text"
    n_formulas = sum(len(re.findall(r"\$\$.+?\$\$", c.source, re.S)) for c in nb.cells if c.cell_type == "markdown")
    assert page["formulas"] >= n_formulas, f"{n_formulas} display formulas in the notebook, {page['formulas']} rendered"


def test_dvc_plots_page_renders_offline(browser, tmp_path):
    html = dvc_plots_page(tmp_path)
    shot = tmp_path / "dvc_plots.png"
    page = load(browser, html, shot)
    assert_clean(page, shot, min_images=0)
    assert "trustlab: DVC plots" in page["headings"]
    drawn = browser.execute_script(
        "return Array.from(document.querySelectorAll('.vega-embed')).map(e => e.querySelectorAll('svg, canvas').length)"
    )
    assert len(drawn) == 2 and all(n > 0 for n in drawn), drawn

"""The persona explorer in a real browser: Debian's headless Chromium driven by Selenium against the service on
127.0.0.1 (uvicorn in a thread, the deterministic doubles, a store built by the test through the service's API).

Chromium runs with every network path closed except loopback (host resolver maps every name to nothing, a dead
proxy for anything not on 127.0.0.1, no background networking, component updates, sync, extensions or metrics).
Without ``chromium`` and ``chromedriver`` (Debian: ``apt-get install chromium chromium-driver``) or Selenium these
tests are skipped, except under ``CI=true``, where that is a failure.

Screenshots of every view are written to ``$PERSONALENS_EXPLORER_SCREENSHOTS`` when set (the committed ones in
``benchmarks/explorer/screenshots`` come from that), else to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from _explorer_helpers import EDIT_NEW, EDIT_OLD, aligned_agent_user, make_explorer_app, make_reports, populate

from personalens.store import PersonaStore

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
REAL_REPORT = REPO / "benchmarks" / "personax" / "results" / "ml50-llm"
KEY_STORAGE = "personalens.explorer.apiKey"
WAIT = 60.0  # a generous safety deadline for each wait, not a timing assertion

CHROMIUM_FLAGS = [
    "--headless=new",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    # off the network: names resolve to nothing (loopback excepted), everything else goes to a dead proxy
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-client-side-phishing-detection",
    "--disable-domain-reliability",
    "--disable-breakpad",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication,CertificateTransparencyComponentUpdater",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-pings",
    "--password-store=basic",
    "--use-mock-keychain",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the explorer's browser tests must run in CI)", pytrace=False)
    pytest.skip(reason)


def _executable(override: str, *candidates: str) -> str | None:
    """``$override`` when set, else the first candidate on PATH (or an absolute path); None unless it is a file."""
    chosen = os.environ.get(override)
    found = [chosen] if chosen else [shutil.which(c) or (c if c.startswith("/") else None) for c in candidates]
    for path in found:
        if path and Path(path).is_file():
            return path
    return None


def find_browser() -> tuple[str | None, str | None]:
    """Debian's chromium and chromedriver (``PERSONALENS_CHROMIUM`` / ``PERSONALENS_CHROMEDRIVER`` override)."""
    chromium = _executable("PERSONALENS_CHROMIUM", "chromium", "chromium-browser")
    driver = _executable("PERSONALENS_CHROMEDRIVER", "chromedriver", "/usr/lib/chromium/chromedriver")
    return chromium, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium, chromedriver = find_browser()
    if chromium is None or chromedriver is None:
        _unavailable("chromium or chromedriver not found: apt-get install chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed: pip install -e '.[dev]'")
    assert chromium is not None and chromedriver is not None
    logs = tmp_path_factory.mktemp("chromium")
    options = Options()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={logs / 'profile'}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    # A driver path given explicitly: Selenium Manager (which could download drivers) is never started.
    service = Service(executable_path=chromedriver, log_output=str(logs / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Path]]:
    """The service on a free port of 127.0.0.1 over a data directory and a reports directory the test made."""
    data_dir = tmp_path_factory.mktemp("explorer-data")
    keys = populate(data_dir)
    assert aligned_agent_user(data_dir) == 2
    reports = make_reports(tmp_path_factory.mktemp("reports") / "results")
    if REAL_REPORT.is_dir():  # a real evaluation report from the repository, copied (symlinks out are refused)
        shutil.copytree(REAL_REPORT, reports / REAL_REPORT.name, ignore=shutil.ignore_patterns("*.jsonl", "*.json"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(make_explorer_app(data_dir, reports), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    stop = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > stop or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", keys, data_dir
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("PERSONALENS_EXPLORER_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_for(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(condition)
    except TimeoutException:
        status = driver.execute_script("return document.getElementById('status').textContent")
        raise AssertionError(f"timed out waiting for {what} (status line: {status!r})") from None


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def one(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def screenshot(driver: Any, folder: Path, name: str, *, full: bool = True, max_height: int = 2400) -> Path:
    """A PNG of the page: the whole page up to ``max_height`` pixels (Chromium's DevTools capture), or only the
    viewport (``full=False``)."""
    import base64

    path = folder / name
    if full:
        width, height = driver.execute_script(
            "return [document.documentElement.clientWidth, document.documentElement.scrollHeight]"
        )
        clip = {"x": 0, "y": 0, "width": width, "height": min(height, max_height), "scale": 1}
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        path.write_bytes(base64.b64decode(shot["data"]))
    else:
        assert driver.save_screenshot(str(path)), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def enter_key(driver: Any, base: str, key: str) -> None:
    driver.get(f"{base}/explorer")
    wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete", "the page")
    one(driver, "#api-key").send_keys(key)
    one(driver, "#key-save").click()


def pick_user(driver: Any, user: str) -> None:
    from selenium.webdriver.support.ui import Select

    wait_for(driver, lambda d: css(d, f'#user-select option[value="{user}"]'), f"user {user} in the list")
    Select(one(driver, "#user-select")).select_by_value(user)


def test_explorer_walkthrough_in_a_real_browser(browser, live, shots):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    base, keys, data_dir = live
    driver = browser
    taken: list[str] = []

    # the key: entered once, kept in this tab's sessionStorage, sent with every request
    enter_key(driver, base, keys["acme"])
    wait_for(driver, lambda d: len(css(d, "#user-select option")) == 3, "the tenant's three users")
    assert driver.execute_script(f"return sessionStorage.getItem('{KEY_STORAGE}')") == keys["acme"]
    assert one(driver, "#api-key").get_attribute("value") == ""

    # the map: points, clusters, centroids, the selected sub-sequences and the persona of each cluster
    pick_user(driver, "alice")
    wait_for(driver, lambda d: one(d, "#map").get_attribute("data-state") == "ready", "alice's map")
    assert one(driver, "#map").get_attribute("data-version") == "2"
    points = css(driver, "#map circle.pt")
    assert len(points) == 15
    assert len(css(driver, "#map circle.pt.selected")) == 5  # budgets 2 + 1 + 2
    assert len(css(driver, "#map g.centroid")) == 3
    assert {p.get_attribute("data-cluster") for p in points} == {"0", "1", "2"}
    cards = css(driver, ".persona-card")
    assert len(cards) == 3 and all("Likes" in c.text for c in cards)
    assert any(f"space {EDIT_NEW}" in c.text for c in cards)
    hovered = css(driver, "#map circle.pt.selected")[0]
    ActionChains(driver).move_to_element(hovered).perform()
    wait_for(driver, lambda d: one(d, "#tooltip").is_displayed(), "the hover tooltip")
    item_id = hovered.get_attribute("data-item")
    assert one(driver, "#tooltip").get_attribute("data-item") == item_id
    assert "genres:" in one(driver, "#tooltip").text and "selected" in one(driver, "#tooltip").text
    taken.append(screenshot(driver, shots, "01-map.png").name)

    # retrieval: the persona the service picks for a typed target item, with every cluster's similarity
    ActionChains(driver).move_to_element(one(driver, "#target-item")).perform()
    one(driver, "#target-item").send_keys("Galaxy War; genres: space")
    one(driver, "#retrieve-btn").click()
    wait_for(driver, lambda d: one(d, "#retrieval").get_attribute("data-cluster") is not None, "the retrieval")
    picked = one(driver, "#retrieval").get_attribute("data-cluster")
    rows = css(driver, "#retrieval .bar-row")
    assert len(rows) == 3 and all(r.find_element("css selector", ".bar-value").text != "–" for r in rows)
    assert one(driver, "#retrieval .bar-row.picked").get_attribute("data-cluster") == picked
    assert "space" in one(driver, "#retrieval .picked-persona").text
    wait_for(driver, lambda d: css(d, "#map .target-marker"), "the target on the map")
    assert one(driver, "#map .target-marker").get_attribute("data-cluster") == picked
    taken.append(screenshot(driver, shots, "02-retrieval.png").name)

    # versions: the timeline and a word-level diff of the build and the manual edit
    one(driver, '#tabs button[data-view="versions"]').click()
    wait_for(driver, lambda d: one(d, "#timeline").get_attribute("data-state") == "ready", "alice's timeline")
    nodes = css(driver, "#timeline .version-node")
    assert [n.get_attribute("data-version") for n in nodes] == ["2", "1"]
    assert "manual" in nodes[0].text and "current" in nodes[0].text and "build" in nodes[1].text
    Select(one(driver, "#diff-a")).select_by_value("1")
    Select(one(driver, "#diff-b")).select_by_value("2")
    one(driver, "#compare-btn").click()
    wait_for(driver, lambda d: one(d, "#diff").get_attribute("data-state") == "ready", "the word diff")
    inserted = " ".join(e.text for e in css(driver, "#diff ins"))
    deleted = " ".join(e.text for e in css(driver, "#diff del"))
    assert EDIT_NEW in inserted and "moody" in inserted and EDIT_OLD in deleted
    assert "+9 words inserted" in one(driver, "#diff .diff-summary").text
    taken.append(screenshot(driver, shots, "03-versions-diff.png").name)

    # a refinement's timeline: each round with its errors before and after
    pick_user(driver, "bob")
    wait_for(driver, lambda d: len(css(d, "#timeline .version-node")) == 3, "bob's three versions")
    assert len(css(driver, "#timeline table.errors")) == 2  # rounds 1 and 2 (the initial persona has none)
    assert "round 2" in css(driver, "#timeline .version-node")[0].text
    taken.append(screenshot(driver, shots, "04-refinement-timeline.png").name)

    # roll back: the button calls the rollback endpoint; the store's current version changes
    pick_user(driver, "alice")
    wait_for(driver, lambda d: len(css(d, "#timeline .version-node")) == 2, "alice's timeline again")
    with PersonaStore(data_dir / "acme" / "personas.sqlite") as store:
        before = store.current("alice")
        assert before is not None and before.version == 2
    one(driver, '.rollback-btn[data-version="1"]').click()
    wait_for(driver, lambda d: "Rolled back" in one(d, "#status").text, "the rollback")
    wait_for(driver, lambda d: len(css(d, "#timeline .version-node")) == 3, "the rolled-back timeline")
    assert "rollback" in css(driver, "#timeline .version-node")[0].text
    with PersonaStore(data_dir / "acme" / "personas.sqlite") as store:
        after = store.current("alice")
        first = store.get("alice", 1)
        assert after is not None and first is not None
        assert after.version == 3 and after.parent_version == 1
        assert [p.text for p in after.personas] == [p.text for p in first.personas]
    taken.append(screenshot(driver, shots, "05-rollback.png").name)
    one(driver, '#tabs button[data-view="map"]').click()
    wait_for(driver, lambda d: one(d, "#map").get_attribute("data-version") == "3", "the map of the new version")

    # reports: the configured reports directory, Markdown rendered, images fetched with the key
    one(driver, '#tabs button[data-view="reports"]').click()
    wait_for(driver, lambda d: css(d, '#report-list button[data-name="toy"]'), "the report list")
    names = [b.get_attribute("data-name") for b in css(driver, "#report-list button")]
    assert "toy" in names and "nested/deeper" in names and not any(n.startswith(".") for n in names)
    one(driver, '#report-list button[data-name="toy"]').click()
    wait_for(driver, lambda d: one(d, "#report").get_attribute("data-state") == "ready", "the toy report")
    assert len(css(driver, "#report table tbody tr")) == 2
    assert "<script>" in one(driver, "#report").text  # shown as text, never run
    loaded = driver.execute_script(
        "return Array.from(document.querySelectorAll('#report img')).map(i => [i.src.slice(0, 5), i.naturalWidth])"
    )
    assert loaded and all(src == "blob:" and width > 0 for src, width in loaded), loaded
    if REAL_REPORT.is_dir():
        one(driver, f'#report-list button[data-name="{REAL_REPORT.name}"]').click()
        wait_for(
            driver,
            lambda d: (
                one(d, "#report").get_attribute("data-name") == REAL_REPORT.name
                and one(d, "#report").get_attribute("data-state") == "ready"
            ),
            "the real report",
        )
        assert css(driver, "#report table") and css(driver, "#report img")
    taken.append(screenshot(driver, shots, "06-report.png").name)
    driver.execute_script("document.querySelector('#report img').scrollIntoView({block: 'center'})")
    taken.append(screenshot(driver, shots, "07-report-figure.png", full=False).name)
    driver.execute_script("window.scrollTo(0, 0)")

    # a PersonaAgent user: the initial persona and a test-time alignment step with the feedback it came from
    one(driver, '#tabs button[data-view="versions"]').click()
    pick_user(driver, "carol")
    wait_for(driver, lambda d: len(css(d, "#timeline .version-node")) == 2, "carol's two agent versions")
    nodes = css(driver, "#timeline .version-node")
    assert "alignment iteration 1" in nodes[0].text and "agent: initial persona" in nodes[1].text
    one(driver, "#timeline details.feedback summary").click()
    assert "heist films as comedy" in one(driver, "#timeline details.feedback").text
    taken.append(screenshot(driver, shots, "08-alignment-timeline.png").name)
    assert taken == [
        "01-map.png",
        "02-retrieval.png",
        "03-versions-diff.png",
        "04-refinement-timeline.png",
        "05-rollback.png",
        "06-report.png",
        "07-report-figure.png",
        "08-alignment-timeline.png",
    ]


def test_the_browser_sees_only_its_tenant_and_refused_keys(browser, live):
    base, keys, _ = live
    driver = browser
    driver.get(f"{base}/explorer")
    driver.execute_script("sessionStorage.clear()")
    enter_key(driver, base, "plk_not-a-key")
    wait_for(driver, lambda d: "refused" in one(d, "#status").text, "the refusal")
    assert driver.execute_script(f"return sessionStorage.getItem('{KEY_STORAGE}')") is None
    enter_key(driver, base, keys["beta"])
    wait_for(driver, lambda d: "accepted" in one(d, "#status").text, "beta's key")
    assert css(driver, "#user-select option") == []  # beta has no users; alice and bob are acme's
    status = driver.execute_script(
        "return fetch('/v1/users/alice/map', {headers: {Authorization: 'Bearer ' + arguments[0]}}).then(r => r.status)",
        keys["beta"],
    )
    assert status == 404
    driver.execute_script("sessionStorage.clear()")

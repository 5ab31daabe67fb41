"""The dead-letter admin in a real headless browser (Debian's chromium and chromedriver, through Selenium):
log in, open the list, retry one, see it gone; the list laid out like a native changelist of the Django version
running (search box, table, filter panel, breadcrumbs, select-all, pager). Screenshots go to
test-artifacts/django/<Django version>/."""

from __future__ import annotations

import itertools
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import django
import pytest

from bgjob_django import send_job

from ..conftest import wait_until
from .conftest import ARTIFACTS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does it)",
)

DJANGO_VERSION = ".".join(str(part) for part in django.VERSION[:2])
DLQ = "/admin/bgjob_django/deadletter/"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(arg)  # fmt: skip
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def shot(driver: object, name: str) -> Path:
    path = ARTIFACTS / "django" / DJANGO_VERSION / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))  # type: ignore[attr-defined]
    return path


def log_in(driver: object, live_server: object, user: object) -> None:
    """Log in through the admin's login form; returns on the admin index."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{live_server.url}/admin/login/?next=/admin/")  # type: ignore[attr-defined]
    driver.find_element(By.NAME, "username").send_keys(user.username)  # type: ignore[attr-defined]
    driver.find_element(By.NAME, "password").send_keys("password")  # type: ignore[attr-defined]
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()  # type: ignore[attr-defined]
    WebDriverWait(driver, 20).until(ec.presence_of_element_located((By.LINK_TEXT, "Dead letters")))


def open_list(driver: object, url: str, width: int) -> None:
    """Open the dead-letter list at a window `width` (px) and wait for its table."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_window_size(width, 1000)  # type: ignore[attr-defined]
    driver.get(url)  # type: ignore[attr-defined]
    WebDriverWait(driver, 20).until(ec.presence_of_element_located((By.ID, "result_list")))


#: Where the list's parts are on the page (CSS px, viewport coordinates).
GEOMETRY = """
const box = (selector) => {
    const el = document.querySelector(selector);
    if (!el) return null;
    const r = el.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height};
};
const results = document.querySelector("#changelist-form .results");
const crumbs = [...document.querySelectorAll(".breadcrumbs li")];
return {
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    search: box("#searchbar"),
    table: box("#result_list"),
    filter: box("#changelist-filter"),
    resultsOverflow: results ? results.scrollWidth - results.clientWidth : null,
    rowHeights: [...document.querySelectorAll("#result_list tbody tr")].map(tr => tr.getBoundingClientRect().height),
    crumbsText: document.querySelector(".breadcrumbs").innerText,
    crumbItems: crumbs.map(li => ({
        display: getComputedStyle(li).display,
        listStyle: getComputedStyle(li).listStyleType,
        after: getComputedStyle(li, "::after").content,
        left: li.getBoundingClientRect().left,
        right: li.getBoundingClientRect().right,
    })),
};
"""


def assert_breadcrumbs_read_home_app_page(geometry: dict) -> None:
    """Breadcrumbs read "Home \u203a App \u203a Page" on one line: never a numbered list; spaced separators."""
    items = geometry["crumbItems"]
    if not items:  # a div with text separators (Django 5.2, 6.0)
        assert re.search(r"Home \u203a \S.* \u203a \S", geometry["crumbsText"]), geometry["crumbsText"]
        return
    # an ordered list (Django 6.1+): the separator is each item's ::after, the gap between items the space
    assert all(i["display"] != "list-item" or i["listStyle"] == "none" for i in items), items
    assert all("\u203a" in i["after"] for i in items[:-1]), items
    gaps = [nxt["left"] - prev["right"] for prev, nxt in itertools.pairwise(items)]
    assert all(gap >= 2 for gap in gaps), f"no space after the separators: gaps {gaps} px"


def test_dead_letter_list_lays_out_like_a_native_changelist(browser, live_server, admin_user, dead, bgjob_client,
                                                            run_worker, settings) -> None:  # fmt: skip
    from selenium.webdriver.common.by import By

    settings.TIME_ZONE = "America/New_York"
    group = run_worker(queues=("default",))
    long_one = send_job("fail", {"text": "x" * 500}, queue="default")  # a long error with no space to break at
    send_job("task:shop.tasks.send_the_invoice_to_the_customer", {}, queue="default")  # a long type, unknown
    wait_until(lambda: bgjob_client.dlq.count() == len(dead) + 2, message="the long dead letters")
    group.stop()
    log_in(browser, live_server, admin_user)

    open_list(browser, live_server.url + DLQ, 1024)
    assert browser.execute_script(GEOMETRY)["search"]["width"] >= 150

    open_list(browser, live_server.url + DLQ, 1280)
    shot(browser, "list-1280")
    geometry = browser.execute_script(GEOMETRY)
    assert geometry["search"]["width"] >= 150
    assert geometry["scrollWidth"] <= geometry["innerWidth"], "the page scrolls sideways"
    table, panel = geometry["table"], geometry["filter"]
    assert table["right"] <= geometry["innerWidth"] and geometry["resultsOverflow"] <= 0, "the table is cut off"
    assert panel["left"] >= table["right"] - 1, "the filter panel is not beside the table"
    assert panel["top"] <= table["top"] and table["top"] - panel["top"] < 200, "the filter panel is not beside it"
    assert len(geometry["rowHeights"]) == len(dead) + 2
    # a long type or error wraps over a few lines, never a letter per line (which made rows 240 px tall)
    assert max(geometry["rowHeights"]) < 130, f"rows too tall: {geometry['rowHeights']}"
    assert_breadcrumbs_read_home_app_page(geometry)

    # the last failure in the active time zone, with its year and the zone's name
    cell = browser.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{long_one}"] td.field-last-failure').text
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d E[SD]T", cell), cell

    # select all: Django's own actions.js checks every row and counts them
    browser.find_element(By.ID, "action-toggle").click()
    boxes = browser.find_elements(By.CSS_SELECTOR, "#result_list input.action-select")
    assert len(boxes) == len(dead) + 2 and all(box.is_selected() for box in boxes)
    counter = browser.find_element(By.CSS_SELECTOR, ".actions .action-counter").text
    assert f"{len(boxes)} of {len(boxes)} selected" in counter
    shot(browser, "list-all-selected")

    browser.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{long_one}"] th a').click()
    browser.find_element(By.ID, "bgjob-payload")
    shot(browser, "detail")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_pager_shows_the_position_and_goes_older_newer_and_newest(browser, live_server, admin_user, dead,
                                                                  monkeypatch) -> None:  # fmt: skip
    from selenium.webdriver.common.by import By

    monkeypatch.setattr("bgjob_django.admin_views.PAGE_SIZE", 2)
    log_in(browser, live_server, admin_user)
    open_list(browser, live_server.url + DLQ, 1280)

    def page() -> tuple[list[str], str, set[str]]:
        rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
        pager = browser.find_element(By.CSS_SELECTOR, "#changelist .paginator")
        links = {a.get_attribute("id") for a in pager.find_elements(By.CSS_SELECTOR, "a[id^=bgjob-]")}
        return [r.get_attribute("data-job-id") for r in rows], " ".join(pager.text.split()), links

    ids, text, links = page()
    assert ids == [dead[3], dead[2]] and "1\u20132 of 4" in text and links == {"bgjob-older"}
    browser.find_element(By.ID, "bgjob-older").click()
    ids, text, links = page()
    assert ids == [dead[1], dead[0]] and "3\u20134 of 4" in text and links == {"bgjob-newest", "bgjob-newer"}
    shot(browser, "list-page-2")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    browser.find_element(By.ID, "bgjob-newer").click()
    ids, text, links = page()
    assert ids == [dead[3], dead[2]] and "1\u20132 of 4" in text and "after=" in browser.current_url
    assert links == {"bgjob-older"}


def test_log_in_open_the_dead_letters_retry_one_and_see_it_gone(browser, live_server, admin_user, dead,
                                                                bgjob_client, run_worker) -> None:  # fmt: skip
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    log_in(browser, live_server, admin_user)
    shot(browser, "1-admin-index")

    browser.find_element(By.LINK_TEXT, "Dead letters").click()
    wait.until(ec.presence_of_element_located((By.ID, "result_list")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert [r.get_attribute("data-job-id") for r in rows] == dead[::-1]
    shot(browser, "2-dead-letter-list")

    browser.find_element(By.LINK_TEXT, dead[0]).click()
    wait.until(ec.presence_of_element_located((By.ID, "bgjob-payload")))
    assert '"text": "ünïcode"' in browser.find_element(By.ID, "bgjob-payload").text
    shot(browser, "3-dead-letter-detail")
    browser.back()

    wait.until(ec.presence_of_element_located((By.ID, "result_list")))
    browser.find_element(By.CSS_SELECTOR, f'input.action-select[value="{dead[1]}"]').click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("retry_selected")
    browser.find_element(By.CSS_SELECTOR, "#changelist-form .actions button[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist li.success")))
    assert "Retried 1 dead letter." in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    remaining = [r.get_attribute("data-job-id") for r in rows]
    assert remaining == [dead[3], dead[2], dead[0]]
    shot(browser, "4-after-retry")
    assert bgjob_client.queue_stats().pending == 1

    browser.find_element(By.ID, "bgjob-purge").click()
    wait.until(ec.presence_of_element_located((By.ID, "bgjob-question")))
    assert "Delete all 3 dead letters" in browser.find_element(By.ID, "bgjob-question").text
    shot(browser, "5-purge-confirmation")

    run_worker(queues=("reports",))
    bgjob_client.schedule("nightly-report", "0 3 * * *", "report", {"user": 0}, tz="Europe/Berlin")
    wait.until(lambda _: bgjob_client.workers())
    browser.get(f"{live_server.url}/admin/bgjob_django/queue/")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#bgjob-workers tr[data-worker]")))
    shot(browser, "6-queues-and-workers")
    browser.set_window_size(1024, 1000)  # a wide table scrolls in its own box, never the page
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    shot(browser, "6-queues-and-workers-1024")

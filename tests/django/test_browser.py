"""The dead-letter admin in a real headless browser (Debian's chromium and chromedriver, through Selenium):
log in, open the list, retry one, see it gone. Screenshots go to test-artifacts/django/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ARTIFACTS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does it)",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)  # fmt: skip
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def shot(driver: object, name: str) -> Path:
    path = ARTIFACTS / "django" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))  # type: ignore[attr-defined]
    return path


def test_log_in_open_the_dead_letters_retry_one_and_see_it_gone(browser, live_server, admin_user, dead,
                                                                bgjob_client, run_worker) -> None:  # fmt: skip
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(f"{live_server.url}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys(admin_user.username)
    browser.find_element(By.NAME, "password").send_keys("password")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.LINK_TEXT, "Dead letters")))
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

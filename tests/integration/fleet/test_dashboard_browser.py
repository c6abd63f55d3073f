"""The fleet dashboard in headless Chromium (Debian's chromium + chromedriver, Selenium).

The fleet service is a real process on SQLite and on PostgreSQL, with SeaweedFS; devices
report through the agent's own reporter code (heartbeats, presigned uploads, batch
notices) and a CI job's upload goes through edgekiln suite's upload function.
Each page is checked for what the data implies, for no console error and for no request
outside the service; a screenshot of each lands in the test's directory (and in
$EDGEKILN_SCREENSHOT_DIR when set, which is how the README's pictures are made).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from devtools.dashboard_screenshots import full_page_png

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CONNECTED_SECONDS = 5.0
CAPTURES = 3  # records in cam-1's one batch


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium with its console and network events recorded."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail("chromium and chromium-driver are not installed (Debian packages; make setup installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fleet(request, fleet_server):
    """A fleet service process on a fresh database of each kind."""
    if request.param == "sqlite":
        return fleet_server(connected_seconds=CONNECTED_SECONDS)
    url = request.getfixturevalue("postgres")
    import psycopg

    name = f"dash_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return fleet_server(db_url=url.rsplit("/", 1)[0] + "/" + name, connected_seconds=CONNECTED_SECONDS)


# -- what the devices and CI send --------------------------------------------------------
def send_heartbeat(fleet, token, device, *, version="0.9.0", model="cls", model_version="3", count=10):
    from edgekiln.agents.reporter import FleetClient, ModelMetrics, build_heartbeat, model_report

    metrics = ModelMetrics()
    for i in range(count):
        metrics.record(0.004 + 0.001 * (i % 3), True, time.time())
    metrics.record(0.0, False, time.time())
    report = model_report(model, model_version, metrics.snapshot(), time.time())
    hb = build_heartbeat(
        device=device[1],
        fleet=device[0],
        agent_version=version,
        now=time.time(),
        agent={"cpu_percent": 2.5 + count % 4, "memory_rss_bytes": 60_000_000 + count * 1000},
        models=[report],
        faults=[],
    )
    answer = FleetClient(fleet.endpoint, lambda: token).post("/v1/agent/heartbeats", {"heartbeats": [hb.to_json()]})
    assert answer == {"accepted": 1, "duplicates": 0}


def send_captures(fleet, token, device, model="cls"):
    """One batch of CAPTURES records (a 128×128 input tensor each) through the agent's cloud sink."""
    from PIL import Image

    from edgekiln.agents import agent_pb2 as pb
    from edgekiln.agents.batches import Batch, batch_key
    from edgekiln.agents.capture import encode_batch
    from edgekiln.agents.reporter import CloudSink, FleetClient
    from edgekiln.zoo import sample_image_path

    image = np.asarray(Image.open(str(sample_image_path())).convert("RGB").resize((128, 128)), dtype=np.float32)
    tensor = ((image / 255.0 - 0.5) / 0.25).transpose(2, 0, 1)[None].astype("<f4")  # NCHW, normalized
    payloads = {}
    for i in range(CAPTURES):
        request = pb.CaptureDataRequest(model_name=model, capture_id=f"rec-{i}")
        request.inference_timestamp.seconds = int(time.time())
        t = request.input_tensors.add()
        t.tensor_metadata.name, t.tensor_metadata.data_type = "input", 5  # FLOAT32
        t.tensor_metadata.shape.extend(tensor.shape)
        t.byte_data = tensor.tobytes()
        payloads[f"rec-{i}"] = request.SerializeToString()
    batch_id, key = batch_key(model, time.strftime("%Y-%m-%d"), list(payloads))
    batch = Batch(batch_id, model, time.strftime("%Y-%m-%d"), key, tuple(payloads))
    encoded = encode_batch(batch, payloads.get, fleet=device[0], device=device[1], embed_limit=1024)
    CloudSink(FleetClient(fleet.endpoint, lambda: token)).deliver(encoded, {r: model for r in payloads})
    return len(encoded.objects)


def upload_benchmarks(fleet, labels):
    """The committed x86_64 results uploaded once per label, gated against themselves."""
    from edgekiln.bench import gate
    from edgekiln.bench.results import BenchReport
    from edgekiln.cli import suite as suite_cli

    report = BenchReport.load(ROOT / "benchmarks" / "results" / "x86_64" / "results.json")
    verdict = gate.check(report, report, gate.GateThresholds(), "stored")
    for label in labels:
        answer = suite_cli.upload_results(
            report, verdict, endpoint=fleet.endpoint, token=fleet.admin_token, target="x86_64", label=label
        )
        assert answer["results"] == len(report.results) and answer["gate"] is True
    return report


# -- what the browser saw -------------------------------------------------------------
def check_page(driver, fleet, out: Path, name: str, secrets: list[str]) -> None:
    """No console error, no request outside the service, no secret in the source; a screenshot."""
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], f"{name}: console errors {errors}"
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    outside = [u for u in urls if not (u.startswith(fleet.endpoint + "/") or u.startswith("data:"))]
    assert urls and outside == [], f"{name}: requests outside the service: {outside}"
    source = driver.page_source
    for secret in secrets:
        assert secret not in source, f"{name}: a secret is in the page source"
    assert "X-Amz-" not in source and fleet.s3.endpoint not in source
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.png").write_bytes(full_page_png(driver))
    if os.environ.get("EDGEKILN_SCREENSHOT_DIR"):
        shared = Path(os.environ["EDGEKILN_SCREENSHOT_DIR"])
        shared.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / f"{name}.png", shared / f"{name}.png")


def wait_for(driver, predicate, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: predicate(d), message=what)


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def sign_in(driver, fleet, credential: str) -> None:
    driver.get(fleet.endpoint + "/dashboard/signin")
    field = css(driver, "#credential")[0]
    field.send_keys(credential)
    field.submit()


def drain_logs(driver) -> None:
    driver.get_log("browser")
    driver.get_log("performance")


CAM1, CAM2, BENCH1 = ("plant", "cam-1"), ("plant", "cam-2"), ("lab", "bench-1")
HEARTBEATS = 4  # cam-1's, before the refresh check sends one more


def test_dashboard_pages_in_chromium(browser, fleet, tmp_path):
    out = tmp_path / "screenshots"
    browser.delete_all_cookies()  # cookies ignore ports: start signed out, with fresh logs
    drain_logs(browser)
    tokens = {d: fleet.register(*d) for d in (CAM1, CAM2, BENCH1)}
    secrets = [fleet.admin_token, *tokens.values()]
    for n in range(2):  # cam-2 reports, then falls silent: offline CONNECTED_SECONDS later
        send_heartbeat(fleet, tokens[CAM2], CAM2, model="det", model_version="1", count=n + 1)
    quiet_since = time.monotonic()
    assert send_captures(fleet, tokens[CAM1], CAM1) == CAPTURES  # one tensor object per record
    report = upload_benchmarks(fleet, ["run-1", "run-2"])

    check_access(browser, fleet, tokens[CAM1], out, secrets)
    sign_in(browser, fleet, fleet.admin_token)
    time.sleep(max(0.0, CONNECTED_SECONDS + 0.5 - (time.monotonic() - quiet_since)))
    for n in range(HEARTBEATS):
        send_heartbeat(fleet, tokens[CAM1], CAM1, count=10 * (n + 1))
    check_overview(browser, fleet, out, secrets)
    check_refresh(browser, fleet, tokens[CAM1])
    drain_logs(browser)
    check_device(browser, fleet, out, secrets)
    check_deployments_and_benchmarks(browser, fleet, out, secrets, report)
    check_phone(browser, fleet, out, secrets)
    check_cross_site_post(browser, fleet)
    check_sign_out(browser, fleet)
    log = fleet.log_file.read_text()
    assert not [s for s in secrets if s in log], "a token is in the service's log"


def check_access(driver, fleet, device_token, out, secrets):
    """Sign-in required; a device token opens nothing, as a header or typed in."""
    driver.get(fleet.endpoint + "/dashboard")
    assert driver.current_url == fleet.endpoint + "/dashboard/signin"
    check_page(driver, fleet, out, "signin", secrets)
    request = urllib.request.Request(fleet.endpoint + "/dashboard", headers={"Authorization": f"Bearer {device_token}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    sign_in(driver, fleet, device_token)
    wait_for(driver, lambda d: css(d, ".error"), 5, "the sign-in error: " + driver.page_source[-600:])
    assert css(driver, ".error")[0].text == "a device token cannot open the dashboard"
    driver.get(fleet.endpoint + "/dashboard/benchmarks")
    assert driver.current_url == fleet.endpoint + "/dashboard/signin"
    drain_logs(driver)  # the refused sign-in's 403 is an expected console error


def check_overview(driver, fleet, out, secrets):
    driver.get(fleet.endpoint + "/dashboard")
    counts = {k: css(driver, f"#count-{k}")[0].text for k in ("total", "online", "offline", "never")}
    assert counts == {"total": "3", "online": "1", "offline": "1", "never": "1"}
    rows = {r.get_attribute("data-device"): r for r in css(driver, "tr.device")}
    assert list(rows) == ["lab/bench-1", "plant/cam-1", "plant/cam-2"]
    assert rows["plant/cam-1"].get_attribute("data-status") == "online"
    assert "cls 3" in rows["plant/cam-1"].text and "0.9.0" in rows["plant/cam-1"].text
    assert "det 1" in rows["plant/cam-2"].text and rows["plant/cam-2"].get_attribute("data-status") == "offline"
    check_page(driver, fleet, out, "overview", secrets)
    # Filters: by model, by status, by fleet.
    driver.get(fleet.endpoint + "/dashboard?model=det")
    assert [r.get_attribute("data-device") for r in css(driver, "tr.device")] == ["plant/cam-2"]
    driver.get(fleet.endpoint + "/dashboard?status=never&sort=device")
    assert [r.get_attribute("data-device") for r in css(driver, "tr.device")] == ["lab/bench-1"]
    driver.get(fleet.endpoint + "/dashboard?fleet=plant&sort=status")
    assert [r.get_attribute("data-device") for r in css(driver, "tr.device")] == ["plant/cam-1", "plant/cam-2"]


def check_refresh(driver, fleet, token):
    """A new heartbeat shows on the open page within 5 s, without a reload."""
    from selenium.common.exceptions import StaleElementReferenceException

    driver.execute_script("window.__notReloaded = true")
    sent = time.monotonic()
    send_heartbeat(fleet, token, CAM1, version="0.9.1", count=50)

    def shows(d):
        try:
            return any("0.9.1" in r.text for r in css(d, 'tr[data-device="plant/cam-1"]'))
        except StaleElementReferenceException:
            return False

    wait_for(driver, shows, 5, "the new heartbeat's agent version")
    assert time.monotonic() - sent < 5.0
    assert driver.execute_script("return window.__notReloaded === true")  # the main section, not the page


def check_device(driver, fleet, out, secrets):
    driver.get(fleet.endpoint + "/dashboard/devices/plant/cam-1")
    assert css(driver, "#agent-version")[0].text == "0.9.1"
    assert css(driver, 'tr[data-model="cls"] .version')[0].text == "3"
    heartbeats = HEARTBEATS + 1
    assert css(driver, "#heartbeats")[0].text == str(heartbeats)
    expected = {"cls: inferences": heartbeats, "cls: latency": 2 * heartbeats, "cls: errors": heartbeats}
    expected.update({"agent CPU": heartbeats, "agent memory": heartbeats})
    for label, points in expected.items():
        chart = css(driver, f'svg.chart[aria-label="{label}"]')[0]
        assert int(chart.get_attribute("data-points")) == points, label
        assert len(chart.find_elements("css selector", "circle")) == points, label
    batches = css(driver, "figure.batch")
    assert len(batches) == 1 and f"{CAPTURES} records" in batches[0].text
    image = batches[0].find_element("css selector", "img.thumb")
    size = wait_for(
        driver,
        lambda d: d.execute_script(
            "return arguments[0].complete && [arguments[0].naturalWidth, arguments[0].naturalHeight]", image
        ),
        10,
        "the thumbnail",
    )
    assert size == [96, 96]
    assert "No deployment has reached this device." in driver.page_source
    check_page(driver, fleet, out, "device", secrets)


def check_deployments_and_benchmarks(driver, fleet, out, secrets, report):
    driver.get(fleet.endpoint + "/dashboard/deployments")
    assert "No deployment plans yet." in css(driver, "#deployments-empty")[0].text
    check_page(driver, fleet, out, "deployments", secrets)
    driver.get(fleet.endpoint + "/dashboard/benchmarks")
    assert css(driver, "#target")[0].text == "x86_64" and css(driver, "#uploads")[0].text == "2"
    assert css(driver, "#gate .badge")[0].text == "passed"
    assert [r.get_attribute("data-key") for r in css(driver, "table.results tbody tr")] == [
        r.key for r in report.results
    ]
    charts = css(driver, "svg.chart")
    assert len(charts) == len(report.results)
    for chart, result in zip(charts, report.results):
        measured = sum(1 for s in result.subjects if s.latency is not None)
        assert int(chart.get_attribute("data-points")) == 2 * measured, result.key  # two uploads
    check_page(driver, fleet, out, "benchmarks", secrets)


def check_phone(driver, fleet, out, secrets):
    """On a phone-sized window nothing scrolls sideways."""
    driver.set_window_size(390, 844)
    try:
        for path, name in (("/dashboard", "overview-phone"), ("/dashboard/devices/plant/cam-1", "device-phone")):
            driver.get(fleet.endpoint + path)
            width = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"{name}: {width}"
            check_page(driver, fleet, out, name, secrets)
    finally:
        driver.set_window_size(1280, 900)


def check_cross_site_post(driver, fleet):
    """Another origin's page posting to sign-out is refused, and the session stays."""
    page = (
        f'<form id="f" method="post" action="{fleet.endpoint}/dashboard/signout">'
        '<input name="csrf" value="forged"></form><script>document.getElementById("f").submit()</script>'
    ).encode()

    class Attacker(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait_for(driver, lambda d: "cross-site request refused" in d.page_source, 10, "the refusal")
    finally:
        server.shutdown()
    driver.get(fleet.endpoint + "/dashboard")
    assert driver.current_url == fleet.endpoint + "/dashboard" and css(driver, "#count-total")
    drain_logs(driver)


def check_sign_out(driver, fleet):
    css(driver, "form.signout button")[0].click()
    wait_for(driver, lambda d: d.current_url.endswith("/dashboard/signin"), 5, "the sign-in page")
    driver.get(fleet.endpoint + "/dashboard/devices/plant/cam-1")
    assert driver.current_url == fleet.endpoint + "/dashboard/signin"

"""Screenshots of the fleet dashboard's pages, for the README (docs/dashboard/).

    python -m devtools.dashboard_screenshots --url http://127.0.0.1:PORT --token-file TOKEN [--out docs/dashboard]

Run it against a fleet that ``make demo-dashboard`` keeps running.  It drives Debian's
headless chromium (chromium-driver) with Selenium, signs in with the admin token, and
writes one palette PNG per page (a phone-sized overview too).
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
from pathlib import Path

PAGES = (("overview", "/dashboard"), ("deployments", "/dashboard/deployments"), ("benchmarks", "/dashboard/benchmarks"))


def full_page_png(driver) -> bytes:
    """The whole page, not only the window (Chrome's DevTools protocol), as PNG bytes."""
    width, height = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {"captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}},
    )
    return base64.b64decode(shot["data"])


def shoot(driver, path: Path) -> None:
    """The whole page as a small palette PNG."""
    from PIL import Image

    image = Image.open(io.BytesIO(full_page_png(driver))).convert("RGB")
    image.quantize(colors=64).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def main(argv: list[str] | None = None) -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the fleet service, e.g. http://127.0.0.1:8080")
    parser.add_argument("--token-file", required=True, type=Path, help="the admin token file")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard"))
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    args.out.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url + "/dashboard/signin")
        shoot(driver, args.out / "signin.png")
        field = driver.find_element(By.ID, "credential")
        field.send_keys(args.token_file.read_text().strip())
        field.submit()
        device = driver.find_element(By.CSS_SELECTOR, "tr.device a").get_attribute("href")
        for name, path in PAGES:
            driver.get(url + path)
            shoot(driver, args.out / f"{name}.png")
        driver.get(device)
        shoot(driver, args.out / "device.png")
        driver.set_window_size(390, 844)
        driver.get(url + "/dashboard")
        shoot(driver, args.out / "overview-phone.png")
    finally:
        driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())

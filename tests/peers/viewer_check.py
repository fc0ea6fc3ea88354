#!/usr/bin/env python3
"""Open a study in the zero-footprint viewer with a real browser (Debian's headless
Chromium, driven by Selenium through Debian's chromedriver: no browser download) and
say whether an image was drawn: the viewport canvas's own pixels, taken as a PNG by the
browser, are not blank. Saves the page and canvas screenshots into --out.

Usage: viewer_check.py --url http://127.0.0.1:PORT/viewer?StudyInstanceUIDs=UID --out DIR
Prints {"drawn": bool, "canvases": n, "stddev": float, "title": str, "errors": [...]}.
"""

import argparse
import io
import json
import os
import time

from PIL import Image, ImageStat
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=90)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              "--window-size=1280,900", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
              "--ignore-gpu-blocklist"):
        options.add_argument(a)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    report = {"drawn": False, "canvases": 0, "stddev": 0.0}
    try:
        driver.get(args.url)
        deadline = time.time() + args.timeout
        while time.time() < deadline:
            canvases = driver.find_elements("css selector", "canvas.cornerstone-canvas")
            report["canvases"] = len(canvases)
            best = 0.0
            for i, c in enumerate(canvases):
                # the viewer re-renders its viewports while loading: a canvas found a
                # moment ago may be gone (stale); look again at the next round
                try:
                    if c.size["width"] < 16 or c.size["height"] < 16:
                        continue
                    png = c.screenshot_as_png
                except StaleElementReferenceException:
                    continue
                img = Image.open(io.BytesIO(png)).convert("L")
                stddev = ImageStat.Stat(img).stddev[0]
                if stddev > best:
                    best = stddev
                    with open(os.path.join(args.out, "viewport.png"), "wb") as f:
                        f.write(png)
            report["stddev"] = best
            # a drawn CT slice has structure; a blank or uniform canvas has none
            if best > 5.0:
                report["drawn"] = True
                break
            time.sleep(2)
        driver.save_screenshot(os.path.join(args.out, "page.png"))
        report["title"] = driver.title
        report["errors"] = [e["message"][:300] for e in driver.get_log("browser")
                            if e["level"] == "SEVERE"][:10]
    finally:
        driver.quit()
    print(json.dumps(report))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Serves a run's TensorBoard directory locally and screenshots it with a
headless Chromium, as the README's pictures were taken.

    python3 scripts/tensorboard_screenshot.py runs/smoke scalars.png
    python3 scripts/tensorboard_screenshot.py runs/smoke trace.png --profile

Default: the scalars dashboard. --profile: the trace viewer of the run's
newest profile (train.profile_steps). Needs `pip install tensorboard
tensorboard-plugin-profile playwright` and a Chromium on the PATH (e.g.
`apt-get install chromium`; playwright drives it, nothing is downloaded).
"""

import argparse
import gzip
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

from playwright.sync_api import sync_playwright


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        body = r.read()
    # The profile plugin answers gzip-compressed whatever was asked.
    return gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("out")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--port", type=int, default=6123)
    p.add_argument("--wait", type=float, default=15, help="seconds for the page to render")
    p.add_argument("--tags", default="train/", help="scalars: the tag filter (a regular expression)")
    a = p.parse_args()
    base = f"http://127.0.0.1:{a.port}"
    tb = subprocess.Popen(
        ["tensorboard", "--logdir", f"{a.run_dir}/tensorboard", "--port", str(a.port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                get(base + "/data/plugins_listing")
                break
            except OSError:
                time.sleep(0.5)
        if a.profile:
            time.sleep(3)
            run = sorted(json.loads(get(base + "/data/plugin/profile/runs")))[-1]
            q = urllib.parse.urlencode({"run": run, "tag": "trace_viewer@"})
            host = json.loads(get(f"{base}/data/plugin/profile/hosts?{q}"))[0]["hostname"]
            data = f"/data/plugin/profile/data?{q}&host={urllib.parse.quote(host)}"
            url = (
                f"{base}/data/plugin/profile/trace_viewer_index.html?is_streaming=false&is_oss=true"
                f"&trace_data_url={urllib.parse.quote(data, safe='')}"
            )
            size = {"width": 1400, "height": 360}
        else:
            url = f"{base}/#scalars&tagFilter={urllib.parse.quote(a.tags, safe='')}"
            size = {"width": 1400, "height": 1000}
        browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=browser, args=["--no-sandbox"])
            page = b.new_page(viewport=size)
            page.goto(url)
            page.wait_for_timeout(a.wait * 1000)
            page.screenshot(path=a.out)
            b.close()
        print(f"wrote {a.out} from {url}")
    finally:
        tb.terminate()
        tb.wait()


if __name__ == "__main__":
    main()

"""Screenshot of the live viewer on a toyworld run (the README's image), taken in headless chromium.

    python tools/screenshot_viewer.py [--out docs/images/viewer-live.png] [--at-step 300] [-- RUN FLAGS...]

Starts `threedistill run --prior toyworld --prompt "a red mug" --viewer` (plus RUN FLAGS), opens the
page when the loop reaches --at-step, waits for the next asset update, saves the screenshot and stops
the run with the viewer's Stop button. Needs /usr/bin/chromium and the [dev] extra (playwright).
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("docs/images/viewer-live.png"))
    p.add_argument("--at-step", type=int, default=300)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=760)
    p.add_argument("run_flags", nargs="*")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, "-m", "threedistill.cli", "run", "--prior", "toyworld", "--prompt", "a red mug", "--out", work,
               "--log.no-progress", "--viewer", "--viewer.port", "0", *args.run_flags]
        run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(run.stderr or []), daemon=True).start()
        try:
            url = None
            while url is None and run.poll() is None:
                found = [m for m in (re.search(r"viewer: (http://\S+)", line) for line in list(lines)) if m]
                url = found[0].group(1) if found else None
                time.sleep(0.2)
            if url is None:
                print("".join(lines), file=sys.stderr)
                return 1
            with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
                browser = pw.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", headless=True,
                                                                args=CHROMIUM_FLAGS, viewport={"width": args.width, "height": args.height})
                page = browser.pages[0]
                page.goto(url)
                status = page.get_by_text(re.compile(r"step \d+ / \d+")).first
                status.wait_for(timeout=300000)
                while int(re.search(r"step (\d+)", status.inner_text()).group(1)) < args.at_step:  # type: ignore[union-attr]
                    time.sleep(0.5)
                time.sleep(3.0)
                for close in page.locator("button.mantine-Notification-closeButton").all():
                    close.click()
                time.sleep(1.0)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out))
                page.get_by_role("button", name="Stop").click()
                browser.close()
            run.wait(timeout=120)
        finally:
            if run.poll() is None:
                run.send_signal(signal.SIGINT)
                run.wait(timeout=60)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

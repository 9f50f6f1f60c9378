"""The report as a browser shows it: headless Chromium renders reports/summary.html at 1280 px and writes a PNG.

    python bench/screenshot_report.py                       # the first screen, to reports/screenshots/first_screen.png
    python bench/screenshot_report.py --height 4000 --out /tmp/page.png

Chromium comes from the system packages (Debian: `apt-get install chromium`); without it the script says so and
exits 0 without writing anything, so it can run anywhere.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 900, browser: str | None = None) -> Path:
    """Render `page` headless at width x height CSS pixels into the PNG `out`."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found (" + ", ".join(BROWSERS) + ")")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: no state from earlier runs
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={out.resolve()}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--page", type=Path, default=Path("reports/summary.html"))
    ap.add_argument("--out", type=Path, default=Path("reports/screenshots/first_screen.png"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    args = ap.parse_args(argv)
    if not args.page.is_file():
        print(f"error: {args.page}: no such page; run `advmix report` first", file=sys.stderr)
        return 1
    if find_browser() is None:
        print("skipped: no Chromium on this machine (Debian: apt-get install chromium)", file=sys.stderr)
        return 0
    print(screenshot(args.page, args.out, args.width, args.height))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Render a build's ``report.html`` in headless Chromium and save a PNG screenshot.

    python scripts/screenshot_report.py hiroml-out                      # -> hiroml-out-report.png
    python scripts/screenshot_report.py hiroml-out --png report.png --height 2400

Needs Debian's ``chromium`` package (``apt-get install chromium``) or ``--chromium PATH``.
The page is self-contained (inline CSS, SVG flow diagram, base64 thumbnails), so Chromium
runs with networking off. A thin wrapper: the page itself is :mod:`hiroml.report`'s.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def screenshot(
    html: Path, png: Path, *, chromium: str | None = None, width: int = 1280, height: int = 1800
) -> Path:
    """Save a ``width`` x ``height`` screenshot of ``html`` to ``png`` and return its path."""
    exe = chromium or next((c for c in CANDIDATES if shutil.which(c)), None)
    if exe is None:
        raise FileNotFoundError("no Chromium found: apt-get install chromium, or give --chromium")
    if not html.is_file():
        raise FileNotFoundError(f"{html}: no such report (run hiroml-build first)")
    png.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--hide-scrollbars", f"--window-size={width},{height}", f"--screenshot={png.resolve()}",
        html.resolve().as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="a hiroml output folder (or a report.html)")
    p.add_argument("--png", type=Path, default=None, help="default: <out>-report.png")
    p.add_argument("--chromium", default=None, help="the browser executable")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=1800)
    a = p.parse_args(argv)
    html = a.out if a.out.suffix == ".html" else a.out / "report.html"
    png = a.png or a.out.with_name(a.out.name + "-report.png")
    try:
        path = screenshot(html, png, chromium=a.chromium, width=a.width, height=a.height)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"screenshot_report: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

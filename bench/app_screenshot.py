"""Regenerate the README's demo screenshot (docs/demo.png) from the real app.

    python bench/app_screenshot.py [--out docs/demo.png] [--image examples/synthref_0000001.png]
        [--phrases "all the stars" "the purple square"] [--checkpoint DIR]

Starts ``python app.py`` (the shipped model unless --checkpoint is given) on a free local
port, drives it in headless Chromium (Debian's /usr/bin/chromium, through Playwright): uploads
the image, types the phrases, presses Ground, waits for the table of boxes (a row per box, or
one saying "no match"), and saves a screenshot of the page's top part.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
DEFAULT_IMAGE = ROOT / "examples" / "synthref_0000001.png"
# Several objects, one, none: the shipped model answers each as it should.
DEFAULT_PHRASES = ["all the stars", "the star furthest from the orange circle", "the purple square"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(checkpoint: str | None, port: int, log: Path, timeout: float = 120) -> subprocess.Popen:
    """``python app.py [--checkpoint DIR] --port PORT``, returned once it answers."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "app.py", "--port", str(port)] + (["--checkpoint", checkpoint] if checkpoint else [])
    with log.open("w") as out:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.terminate()
            raise RuntimeError(f"app.py did not answer within {timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.5)


def ground_in_browser(page, url: str, image: Path, phrases: list[str], timeout_ms: int = 60_000) -> list[list[str]]:
    """Open the app at ``url`` in the Playwright ``page``, ground ``phrases`` in ``image``; returns
    the rows of the boxes table as text: (phrase number, phrase, x0, y0, x1, y1, score) per box,
    (phrase number, phrase, "no match") for a phrase without one."""
    page.set_default_timeout(timeout_ms)
    page.goto(url)
    file_input = page.locator("input[type=file]").first
    file_input.wait_for(state="attached")
    file_input.set_input_files(str(image))
    page.locator(f'img[src*="{image.stem}"]').first.wait_for(state="visible")  # uploaded
    page.get_by_label("Phrases (one per line)").fill("\n".join(phrases))
    page.get_by_role("button", name="Ground", exact=True).click()
    page.locator("#grounded-image img").wait_for(state="visible")
    # A row per box (a phrase may have several, or one saying "no match"), phrases in order.
    last = f"'{len(phrases)}'"
    page.wait_for_function("(() => { const rows = document.querySelectorAll('#boxes-table tbody tr');"
                           f" return rows.length >= {len(phrases)} &&"
                           f" rows[rows.length - 1].querySelector('td').innerText.trim() === {last}; }})()")
    rows = page.locator("#boxes-table tbody tr")
    return [[cell.strip() for cell in rows.nth(i).locator("td").all_inner_texts()] for i in range(rows.count())]


def capture(url: str, image: Path, phrases: list[str], out: Path, size: tuple[int, int] = (1280, 900)) -> list[list[str]]:
    """Ground ``phrases`` in ``image`` in the app at ``url`` and save a ``size`` screenshot of
    the page's top to ``out``; returns the boxes table's rows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            rows = ground_in_browser(page, url, image, phrases)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.evaluate("window.scrollTo(0, 0)")  # the page's top, wherever grounding left it
            page.screenshot(path=str(out))
        finally:
            browser.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "demo.png"))
    parser.add_argument("--image", default=str(DEFAULT_IMAGE))
    parser.add_argument("--phrases", nargs="+", default=DEFAULT_PHRASES)
    parser.add_argument("--checkpoint", help="serve this checkpoint first (default: the shipped model)")
    parser.add_argument("--size", type=int, nargs=2, default=[1280, 900], metavar=("WIDTH", "HEIGHT"))
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} not found: install Debian's chromium (make browser)")
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"simvg_app_screenshot_{port}.log"
    process = start_app(args.checkpoint, port, log)
    try:
        rows = capture(f"http://127.0.0.1:{port}", Path(args.image), args.phrases, Path(args.out), tuple(args.size))
    finally:
        process.terminate()
        process.wait(timeout=15)
    for row in rows:
        print(" | ".join(row))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

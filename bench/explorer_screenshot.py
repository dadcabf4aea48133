"""Screenshot of the explorer (notebook 06) in a real JupyterLab, for the README.

Runs notebook 06 on the digits preset (`--quick`: the quick reproduction's
teacher and students, which `dash reproduce --preset digits --quick` trains;
otherwise the full-budget models) in headless Chromium, presses "Run DDIM" and
saves the explorer's output area as docs/img/explorer_digits.png. It reuses the
browser test's helpers (JupyterLab with token auth, Debian's /usr/bin/chromium
through Playwright's `executable_path`). Models missing from $DASH_RUNS (default
runs/) are trained first.

    python bench/explorer_screenshot.py --quick [--out docs/img/explorer_digits.png]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_explorer_browser import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    free_port,
    run_all_cells,
    start_lab,
    stop,
    wait_for_server,
    wait_new_image,
)

METHODS = ["cond-only", "dash"]


def prepared_notebook(folder: Path, preset: str, quick: bool, t_fraction: float) -> Path:
    import papermill

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "06_explorer.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "06_explorer.ipynb"), str(out),
                               parameters={"preset": preset, "quick": quick, "methods": METHODS,
                                           "t_fraction": t_fraction},
                               prepare_only=True, progress_bar=False)
    return out


def screenshot(notebook: Path, out: Path, tmp: Path) -> dict:
    from playwright.sync_api import expect, sync_playwright

    port, token = free_port(), secrets.token_hex(16)
    proc = start_lab(notebook.parent, tmp, port, token)
    try:
        wait_for_server(port, token, proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1900, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}")
            run_all_cells(page, expect)
            img = page.locator("img.widget-image")
            expect(img).to_be_visible(timeout=60_000)
            src = img.get_attribute("src")
            page.locator("button", has_text="Run DDIM").click()
            wait_new_image(page, img, src)
            area = page.locator(".jp-OutputArea-output", has=img)
            area.scroll_into_view_if_needed()
            out.parent.mkdir(parents=True, exist_ok=True)
            area.screenshot(path=str(out))
            stats = page.locator(".widget-html-content", has_text="redraw").first.inner_text()
            browser.close()
    finally:
        stop(proc)
    return {"status": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--quick", action="store_true", help="the quick reproduction's models")
    parser.add_argument("--t-fraction", type=float, default=0.3, help="timestep shown, fraction of T")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "explorer_digits.png")
    args = parser.parse_args()
    os.environ.setdefault("DASH_RUNS", str(ROOT / "runs"))
    from dashlib import pipeline
    from dashlib.explorer import load_models

    started = time.monotonic()
    load_models(pipeline.budget(args.preset, quick=args.quick, device="cpu").preset, METHODS,
                progress=True)  # train now, so the notebook only loads
    tmp = Path(os.environ["DASH_RUNS"]) / "screenshots" / "lab"
    notebook = prepared_notebook(tmp / "notebooks", args.preset, args.quick, args.t_fraction)
    facts = screenshot(notebook, args.out, tmp)
    facts.update(preset=args.preset, quick=args.quick, t_fraction=args.t_fraction, out=str(args.out),
                 seconds=round(time.monotonic() - started, 1))
    print(json.dumps(facts, indent=1))


if __name__ == "__main__":
    main()

"""The explorer as a user sees it: a real JupyterLab server and headless Chromium.

Starts `jupyter lab` on localhost with token auth on, opens notebook 06 (set to
the `tiny` preset) in Debian's Chromium driven by Playwright (launched with
`executable_path`, no browser download), runs all cells from the Run menu,
moves the timestep slider with the keyboard and checks that the rendered
panel image changed. Saves screenshots under the test's tmp dir and copies
the last one to runs/screenshots/06_explorer.png.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("DASH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
METHODS = ["cond-only", "dash"]

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install chromium; "
                                       f".ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_notebook(folder: Path) -> Path:
    """Notebook 06 with papermill's injected parameters for the tiny preset."""
    import papermill

    folder.mkdir(parents=True)
    out = folder / "06_explorer.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "06_explorer.ipynb"), str(out),
                               parameters={"preset": "tiny", "methods": METHODS},
                               prepare_only=True, progress_bar=False)
    return out


def quiet_settings(settings: Path) -> None:
    """User settings that stop JupyterLab asking about news (a toast over the page)."""
    folder = settings / "@jupyterlab" / "apputils-extension"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')


def start_lab(notebooks: Path, tmp: Path, port: int, token: str) -> subprocess.Popen:
    quiet_settings(tmp / "jsettings")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "MPLBACKEND": "Agg", "JUPYTER_CONFIG_DIR": str(tmp / "jconfig"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "jruntime"), "JUPYTERLAB_SETTINGS_DIR": str(tmp / "jsettings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "jworkspaces"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
           "--ip=127.0.0.1", f"--ServerApp.token={token}", f"--ServerApp.root_dir={notebooks}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = open(tmp / "jupyter.log", "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_server(port: int, token: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("jupyter lab did not answer in time")


def stop(proc: subprocess.Popen) -> None:
    """Stop the server we started (its own process group: the server and its kernels)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_explorer_in_jupyterlab(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    started = time.monotonic()
    notebook = tiny_notebook(tmp_path / "notebooks")
    port, token = free_port(), secrets.token_hex(16)
    proc = start_lab(notebook.parent, tmp_path, port, token)
    try:
        # Train the tiny teacher and students while the server boots; the notebook reuses them.
        from dashlib.explorer import load_models
        from dashlib.presets import get_preset

        load_models(get_preset("tiny"), METHODS)
        wait_for_server(port, token, proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}")
            run_explorer(page, expect, tmp_path)
            browser.close()
    finally:
        stop(proc)
    print(f"browser test took {time.monotonic() - started:.1f} s")


def run_all_cells(page, expect):
    """Wait until the kernel is connected, run every cell from the Run menu, and
    check that every code cell really ran (an execution count in its prompt)."""
    kernel = page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$"))
    expect(kernel).to_be_visible(timeout=90_000)
    prompts = page.locator(".jp-CodeCell .jp-InputPrompt")
    expect(prompts.first).to_be_visible()
    for _attempt in range(2):  # the first Run All can be lost while the kernel's channels settle
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Cells$")).click()
        try:
            expect(prompts.first).to_have_text(re.compile(r"\[(\d+|\*)\]:"), timeout=20_000)
            break
        except AssertionError:
            continue
    for i in range(prompts.count()):
        expect(prompts.nth(i)).to_have_text(re.compile(r"\[\d+\]:"), timeout=90_000)
    errors = page.locator(".jp-OutputArea-output", has_text="Traceback")
    assert errors.count() == 0, errors.first.inner_text()


def wait_new_image(page, img, old_src: str) -> str:
    page.wait_for_function("([el, old]) => el.src && el.src !== old",
                           arg=[img.element_handle(), old_src], timeout=30_000)
    return img.get_attribute("src")


def run_explorer(page, expect, tmp_path):  # noqa: ANN001, ANN201
    run_all_cells(page, expect)
    img = page.locator("img.widget-image")
    expect(img).to_be_visible(timeout=30_000)
    expect(page.locator(".widget-html-content", has_text="redraw")).to_be_visible()
    expect(page.locator(".jp-OutputArea-output", has_text="redraws: median")).to_be_visible()
    # tiny's models are a smoke test: the explorer must say so rather than mislead
    expect(page.locator(".widget-html-content", has_text="smoke test")).to_be_visible()
    expect(page.locator(".widget-checkbox", has_text="dash")).to_be_visible()
    img.scroll_into_view_if_needed()
    src, before = img.get_attribute("src"), img.screenshot()

    slider = page.locator(".widget-slider", has=page.locator("label", has_text="timestep t"))
    handle = slider.locator(".noUi-handle")
    start_t = int(handle.get_attribute("aria-valuenow").split(".")[0])
    handle.focus()
    page.keyboard.press("Home")  # the keyboard way to drag the slider to t = 0
    src = wait_new_image(page, img, src)
    expect(slider.locator(".widget-readout")).to_have_text("0")
    after = img.screenshot()
    assert start_t != 0 and after != before, "moving the timestep slider must redraw the panels"
    page.screenshot(path=str(tmp_path / "explorer-after-slider.png"))

    page.locator("button", has_text="Run DDIM").click()
    wait_new_image(page, img, src)
    expect(page.locator(".widget-html-content", has_text="redraw")).to_be_visible()
    img.scroll_into_view_if_needed()
    shot = tmp_path / "06_explorer.png"
    page.screenshot(path=str(shot))
    keep = ROOT / "runs" / "screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / shot.name)
    print(f"screenshots: {shot} and {keep / shot.name}")

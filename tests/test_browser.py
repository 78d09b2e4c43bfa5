"""Notebook 02's temperature explorer in a real browser: JupyterLab + Debian's Chromium + Playwright.

nbval never renders a widget, so this is the only test that would notice a broken explorer.
It needs `chromium` on the PATH (`apt-get install chromium`) and the `playwright` Python package
(requirements.txt); it never downloads a browser. Outside CI (env CI unset) it skips when either
is missing; in CI a missing one fails. Screenshots land in the test's tmp folder.
`make browser-test` runs it alone.
"""
from __future__ import annotations

import json
import os
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
NOTEBOOK = "02_soft_targets_and_temperature.ipynb"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
RUN_TIMEOUT_S = 600  # all cells of notebook 02; about a minute on an idle 2-core machine


def _missing(what: str, fix: str):
    message = f"{what} not found; {fix}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must run this test)")
    pytest.skip(message)


@pytest.fixture
def chromium_path():
    path = shutil.which("chromium")
    if path is None:
        _missing("chromium", "install Debian's: `sudo apt-get install chromium`")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright package", "run `make setup` (it is in requirements.txt); no browser download needed")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM lets the server shut its kernels down; the process group gets SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on 127.0.0.1 (random free port, random token), serving a copy of notebook 02.

    The copy, its saved outputs removed, sits in tmp/notebooks/ beside a link tmp/data -> the repository's data/, so the
    notebook's `../data` finds the dataset and its `../runs/dev` writes into tmp. Jupyter's config,
    runtime and settings live in tmp too. Yields ``(base_url, token, workdir)``.
    """
    work = tmp_path / "work"
    (work / "notebooks").mkdir(parents=True)
    nb = json.loads((ROOT / "notebooks" / NOTEBOOK).read_text())
    for cell in nb["cells"]:  # start clean, so every output and count seen comes from this run
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    (work / "notebooks" / NOTEBOOK).write_text(json.dumps(nb))
    (work / "data").symlink_to(ROOT / "data", target_is_directory=True)
    jupyter = tmp_path / "jupyter"
    settings = jupyter / "config" / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # every cell stays in the page (JupyterLab otherwise may leave off-screen cells out)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    news = settings.parent / "apputils-extension"  # no "get notified about Jupyter news?" toast
    news.mkdir()
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(jupyter / "config"), JUPYTER_RUNTIME_DIR=str(jupyter / "runtime"),
               JUPYTER_DATA_DIR=str(jupyter / "data"), IPYTHONDIR=str(jupyter / "ipython"),
               JUPYTERLAB_SETTINGS_DIR=str(jupyter / "config" / "lab" / "user-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(jupyter / "workspaces"))
    env.pop("DISTILL_WIDGETS", None)  # the explorer must find the live frontend by itself
    port, token = _free_port(), secrets.token_hex(24)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log_path = tmp_path / "jupyterlab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer within 120 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, token, work
    finally:
        _stop(proc)


@pytest.fixture
def page(chromium_path, tmp_path):
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()
    finally:
        pw.stop()


# Reads the open notebook's model through `window.jupyterapp` (--LabApp.expose_app_in_browser).
NOTEBOOK_STATE_JS = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.content.model || !panel.sessionContext) return null;
  const cells = [];
  for (const cell of panel.content.model.cells) {
    if (cell.type !== 'code') continue;
    cells.push({count: cell.executionCount, outputs: cell.outputs.toJSON()});
  }
  return {kernel: panel.sessionContext.kernelDisplayStatus, cells};
}"""


def _errors(state) -> list[str]:
    found = []
    for i, cell in enumerate(state["cells"]):
        for out in cell["outputs"]:
            if out.get("output_type") == "error":
                found.append(f"code cell {i}: {out.get('ename')}: {out.get('evalue')}")
    return found


def _run_all(page) -> dict:
    """Run every cell (JupyterLab's own run-all command) and wait until all ran or one failed."""
    page.wait_for_function(
        "() => { const p = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " return p && p.sessionContext && p.sessionContext.kernelDisplayStatus === 'idle'; }", timeout=120_000)
    # not awaited: the command's promise settles only when every cell has run, and it could wait forever
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        state = page.evaluate(NOTEBOOK_STATE_JS)
        done = all(c["count"] is not None for c in state["cells"]) and state["kernel"] == "idle"
        if done or _errors(state):
            return state
        page.wait_for_timeout(1000)
    pytest.fail(f"notebook 02 did not finish within {RUN_TIMEOUT_S} s in the browser: {state}")


def _image_src(explorer) -> str:
    img = explorer.locator(".jp-OutputArea-output img")
    img.first.wait_for(state="visible")
    assert img.count() == 1, f"the explorer should show one plot, shows {img.count()}"
    return img.first.get_attribute("src")


KERNEL_IDLE_JS = "() => window.jupyterapp.shell.currentWidget.sessionContext.kernelDisplayStatus === 'idle'"


def _settled_new_image(explorer, old: str) -> str:
    """The explorer's plot once it differs from ``old`` and the kernel has drawn every queued
    change (a drag sends several values): idle, and the same image for a second."""
    page = explorer.page
    page.wait_for_function(
        "([el, old]) => { const img = el.querySelector('.jp-OutputArea-output img');"
        " return img && img.getAttribute('src') && img.getAttribute('src') !== old; }",
        arg=[explorer.element_handle(), old], timeout=60_000)
    deadline = time.monotonic() + 120
    src = _image_src(explorer)
    while time.monotonic() < deadline:
        page.wait_for_function(KERNEL_IDLE_JS, timeout=60_000)
        page.wait_for_timeout(1000)
        now = _image_src(explorer)
        if now == src and page.evaluate(KERNEL_IDLE_JS):
            return src
        src = now
    pytest.fail("the explorer kept redrawing for 120 s after one change")


def test_temperature_explorer_in_chromium(chromium_path, lab, page, tmp_path):
    base, token, work = lab
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page.goto(f"{base}/lab/tree/notebooks/{NOTEBOOK}?token={token}")

    started = time.monotonic()
    state = _run_all(page)
    ran_s = time.monotonic() - started
    assert not _errors(state), "cells failed in the browser:\n" + "\n".join(_errors(state))
    assert len(state["cells"]) >= 3 and all(c["count"] for c in state["cells"]), state

    slider, dropdown = page.locator(".widget-hslider"), page.locator(".widget-dropdown")
    assert slider.count() == 1, f"expected one slider (.widget-hslider), found {slider.count()}"
    assert dropdown.count() == 1, f"expected one dropdown (.widget-dropdown), found {dropdown.count()}"
    explorer = page.locator(".widget-vbox", has=slider).last
    explorer.scroll_into_view_if_needed()
    assert slider.is_visible() and dropdown.is_visible()
    readout = slider.locator(".widget-readout")
    before_value, before_src = readout.inner_text().strip(), _image_src(explorer)
    assert before_src.startswith("data:image/"), before_src[:60]
    page.screenshot(path=shots / "before.png", full_page=False)

    # drag the slider's handle to one end of its track: the readout moves and the plot is replaced
    handle, track = slider.locator(".noUi-handle"), slider.locator(".noUi-target")
    box, line = handle.bounding_box(), track.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    right = x < line["x"] + line["width"] * 0.75  # towards higher T unless it is already near the top
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(line["x"] + line["width"] + 20 if right else line["x"] - 20, y, steps=12)
    page.mouse.up()
    slid_src = _settled_new_image(explorer, before_src)
    after_value = readout.inner_text().strip()
    moved = float(after_value) > float(before_value) if right else float(after_value) < float(before_value)
    assert moved, f"dragged {'right' if right else 'left'}, the slider's readout went {before_value} -> {after_value}"
    page.screenshot(path=shots / "after_slider.png", full_page=False)

    # pick another image in the dropdown: the plot is replaced again
    select = dropdown.locator("select")
    options = select.locator("option").all_inner_texts()
    assert len(options) > 1, options
    other = (select.evaluate("el => el.selectedIndex") + 1) % len(options)
    select.select_option(index=other)
    picked_src = _settled_new_image(explorer, slid_src)
    assert picked_src not in (before_src, slid_src)
    page.screenshot(path=shots / "after_dropdown.png", full_page=False)

    state = page.evaluate(NOTEBOOK_STATE_JS)
    assert not _errors(state), "cells failed after using the explorer:\n" + "\n".join(_errors(state))
    stderr = explorer.locator('[data-mime-type="application/vnd.jupyter.stderr"]')
    assert stderr.count() == 0, f"the explorer printed an error: {stderr.all_inner_texts()}"
    assert sorted(p.name for p in shots.iterdir()) == ["after_dropdown.png", "after_slider.png", "before.png"]
    print(f"all cells ran in {ran_s:.0f} s; slider {before_value} -> {after_value}; image -> {options[other]}; "
          f"screenshots in {shots}")

"""The browser viewer (scripts/viewer.py) on a tiny trained avatar, on the CPU, driven from a real
headless Chromium: the page loads, the streamed image shows the avatar, and moving the jaw slider
changes it. Skipped, saying what is missing, without Chromium or the `viewer` extra."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from headless_browser import PATIENCE, Browser, find_chromium, wait_for
from tiny_experiment import experiment_root, tiny_conf

REPO = Path(__file__).resolve().parents[1]
JAW_THUMB = """(() => {
  const label = [...document.querySelectorAll('*')].find(e => e.childElementCount === 0 && e.textContent.trim() === 'jaw open');
  let row = label;
  while (row && !row.querySelector('[role=slider]')) row = row.parentElement;
  if (!row) return null;
  const thumb = row.querySelector('[role=slider]');
  thumb.focus();
  return thumb.getAttribute('aria-valuenow');
})()"""
JAW_VALUE = "document.activeElement && document.activeElement.getAttribute('aria-valuenow')"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def trained(data_folder, tmp_path_factory):
    """The train folder of the tiny avatar after one epoch."""
    pytest.importorskip("viser", reason="the viewer needs viser: pip install -e \".[viewer]\"")
    pytest.importorskip("websocket", reason="the browser test needs websocket-client: pip install -e \".[viewer]\"")
    if find_chromium() is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium): the viewer's browser test cannot run")
    from dynavatar.train.trainer import Trainer, TrainOptions

    exps = tmp_path_factory.mktemp("viewer") / "exps"
    Trainer(tiny_conf(data_folder, exps), TrainOptions(nepoch=1)).run()
    return experiment_root(exps) / "train"


def _centre(image: np.ndarray) -> np.ndarray:
    """The middle of the page, away from the control panel (right) and notices (corners)."""
    h, w = image.shape[:2]
    return image[int(0.25 * h):int(0.75 * h), int(0.3 * w):int(0.7 * w)].astype(np.int16)


def test_browser_shows_the_avatar_and_the_jaw_slider_moves_it(trained, tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "code"), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, str(REPO / "scripts" / "viewer.py"), "--load_path", str(trained),
                               "--host", "127.0.0.1", "--port", str(port), "--resolution", "192"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: server.poll() is not None or _serving(url), PATIENCE, "the viewer to serve its page")
        assert server.poll() is None, server.stdout.read()[-3000:]
        with Browser(find_chromium(), tmp_path / "profile") as browser:
            browser.open(url)
            # The avatar (coloured Gaussians over white) fills part of the middle of the page.
            before = wait_for(lambda: (lambda c: c if (np.abs(c - 255).max(axis=-1) > 40).mean() > 0.01 else None)(
                _centre(browser.screenshot())), PATIENCE, "the streamed image to show the avatar")
            assert wait_for(lambda: browser.evaluate(JAW_THUMB), PATIENCE, "the jaw slider") is not None
            browser.press("End", 35)  # the slider to its maximum: the mouth opens
            wait_for(lambda: browser.evaluate(JAW_VALUE) not in (None, "0"), PATIENCE, "the jaw slider to move")
            wait_for(lambda: np.abs(_centre(browser.screenshot()) - before).mean() > 0.5, PATIENCE,
                     "the image to change after the jaw moved")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)

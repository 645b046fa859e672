"""The browser viewer (scripts/viewer.py) on a tiny trained avatar, on the CPU, driven from a real
headless Chromium: the page loads, the streamed image shows the avatar, and moving the jaw slider
changes it; and `--measure`, timed by a client speaking the page's protocol. The browser test is skipped
without Chromium, both without the `viewer` extra, each saying what is missing."""

from __future__ import annotations

import os
import re
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
    pytest.importorskip("websocket", reason="the viewer's tests need websocket-client: pip install -e \".[viewer]\"")
    from dynavatar.train.trainer import Trainer, TrainOptions

    exps = tmp_path_factory.mktemp("viewer") / "exps"
    Trainer(tiny_conf(data_folder, exps), TrainOptions(nepoch=1)).run()
    return experiment_root(exps) / "train"


def _centre(image: np.ndarray) -> np.ndarray:
    """The middle of the page, away from the control panel (right) and notices (corners)."""
    h, w = image.shape[:2]
    return image[int(0.25 * h):int(0.75 * h), int(0.3 * w):int(0.7 * w)].astype(np.int16)


def _viewer_command(trained: Path, port: int, *extra: str) -> tuple[list[str], dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "code"), os.environ.get("PYTHONPATH", "")])}
    return ([sys.executable, str(REPO / "scripts" / "viewer.py"), "--load_path", str(trained),
             "--host", "127.0.0.1", "--port", str(port), *extra], env)


def test_browser_shows_the_avatar_and_the_jaw_slider_moves_it(trained, tmp_path):
    if find_chromium() is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium): the viewer's browser test cannot run")
    port = _free_port()
    command, env = _viewer_command(trained, port, "--resolution", "192")
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
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


def test_measure_times_slider_moves_and_a_playing_sequence_from_the_pages_side(trained, tmp_path):
    """`--measure`: a client speaking the page's protocol gets one new image per jaw move and images while
    a sequence plays; the figures are printed (their values depend on the machine and are not checked)."""
    command, env = _viewer_command(trained, _free_port(), "--resolution", "64", "--measure", "4",
                                   "--play_seconds", "1", "--fps", "10")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=PATIENCE)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "over 4 moves" in done.stdout and "at 64x64" in done.stdout, done.stdout
    played = re.search(r"played at 10 fps: (\d+) images in ([\d.]+) s", done.stdout)
    assert played, done.stdout
    images, seconds = int(played.group(1)), float(played.group(2))
    # One image per shown frame: a sequence that wrapped around once drew a new image on every turn of
    # the render loop. (A slow machine draws fewer, never more.)
    assert 1 <= images <= 10 * seconds + 2, done.stdout


def test_the_page_client_names_a_frame_it_cannot_read():
    pytest.importorskip("zstandard", reason="viser's dependencies")
    from dynavatar.viewer.page_client import ProtocolError, decode_frame

    with pytest.raises(ProtocolError, match="16-byte header"):
        decode_frame(b"short")
    with pytest.raises(ProtocolError, match="wire format"):
        decode_frame((8).to_bytes(8, "little") + (8).to_bytes(8, "little") + b"notzstd!")

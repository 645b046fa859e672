"""A headless Chromium driven over the Chrome DevTools Protocol (a websocket, `websocket-client`):
open a page, run JavaScript in it, click and press keys, take screenshots. Uses the system's
Chromium; nothing is downloaded."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import signal
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The path of a Chromium or Chrome binary on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


# Waits only bound a hang: a loaded machine, however slow, never comes near them.
PATIENCE = 600.0


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    """Poll `condition()` until it returns something other than None, False or an empty container
    (returned), or `timeout` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value is not None and value is not False and not (isinstance(value, (str, list, dict)) and not value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Browser:
    """One headless Chromium with one page. Use as a context manager: the browser is killed on exit."""

    def __init__(self, binary: str, profile: Path, width: int = 1200, height: int = 800) -> None:
        import websocket  # websocket-client (the `viewer` extra)

        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu-sandbox", "--use-angle=swiftshader",
             "--enable-unsafe-swiftshader", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = profile / "DevToolsActivePort"
            wait_for(lambda: port_file.is_file() and port_file.read_text().strip(), PATIENCE,
                     "Chromium to start")
            port = int(port_file.read_text().split()[0])
            pages = wait_for(lambda: [t for t in self._targets(port) if t.get("type") == "page"], PATIENCE,
                             "Chromium's first page")
            self.socket = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=PATIENCE,
                                                      suppress_origin=True)
        except BaseException:
            self.close()
            raise
        self._ids = itertools.count(1)

    @staticmethod
    def _targets(port: int) -> list[dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            return []

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        socket = getattr(self, "socket", None)
        if socket is not None:
            socket.close()
        if self.process.poll() is None:  # its renderer and GPU processes share its process group
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def call(self, method: str, **params) -> dict:
        """One DevTools command; its result (events that arrive meanwhile are dropped)."""
        message_id = next(self._ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def open(self, url: str, timeout: float = PATIENCE) -> None:
        """Navigate to `url` and wait until its document has loaded."""
        self.call("Page.navigate", url=url)

        def loaded() -> bool:
            try:
                return self.evaluate("document.readyState") == "complete"
            except RuntimeError:  # the page is being replaced: ask again
                return False
        wait_for(loaded, timeout, f"{url} to load")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-serialisable values)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            return None
        return result["result"].get("value")

    def screenshot(self) -> np.ndarray:
        """The page as it is shown [H, W, 3] uint8."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def press(self, key: str, code: int) -> None:
        """A key press on the focused element (`key` as KeyboardEvent.key, `code` its virtual key code)."""
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)

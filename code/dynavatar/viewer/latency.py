"""The viewer timed from a page's side of the connection: how long a slider move takes to bring a
new image, and how many images a second a playing sequence delivers (`scripts/viewer.py --measure`).

A `PageClient` connects as the page would, sends the camera of the subject's first video, moves the
jaw slider back and forth (each move waits for its image), then plays a sequence and counts the
images that arrive."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from .camera import StartView, start_as_view
from .page_client import CameraSpec, PageClient

JAW_LABEL = "jaw open"
SEQUENCE_LABEL = "sequence"
PLAY_LABEL = "play / pause"
JAW_VALUES = (0.05, 0.45)  # two openings far apart: every move changes the image


@dataclass
class Measurement:
    width: int
    height: int
    slider_ms: list[float]  # one per move: the move sent -> its image received
    sequence: str | None
    sequence_fps: float  # the frame rate the sequence was asked to play at
    play_seconds: float
    images_played: int  # images received while it played

    @property
    def images_per_second(self) -> float:
        return self.images_played / self.play_seconds if self.play_seconds > 0 else 0.0

    def summary(self) -> str:
        ms = sorted(self.slider_ms)
        lines = [f"slider move to image at {self.width}x{self.height}: median {statistics.median(ms):.1f} ms, "
                 f"90th percentile {ms[min(len(ms) - 1, int(0.9 * len(ms)))]:.1f} ms, "
                 f"max {ms[-1]:.1f} ms over {len(ms)} moves"]
        if self.sequence is not None:
            lines.append(f"sequence '{self.sequence}' played at {self.sequence_fps:g} fps: {self.images_played} "
                         f"images in {self.play_seconds:.1f} s = {self.images_per_second:.1f} images/s")
        lines.append("(measured by a client speaking the page's protocol on this machine; the browser's "
                     "decoding and drawing of each image is not included)")
        return "\n".join(lines)


def page_camera(start: StartView, width: int, height: int) -> CameraSpec:
    view = start_as_view(start)
    return CameraSpec(view.wxyz, view.position, view.fov, start.look_at, start.up, width, height)


def measure(url: str, start: StartView, width: int, height: int, moves: int, sequence: str | None,
            sequence_fps: float, play_seconds: float) -> Measurement:
    """Time `moves` jaw-slider moves, then play `sequence` (None: skip) for `play_seconds`."""
    with PageClient(url) as client:
        client.send_camera(page_camera(start, width, height))
        client.next_image()  # the first image of this view
        client.control(JAW_LABEL)  # known before the clock starts
        latencies = []
        for k in range(moves):
            client.drain()
            sent = time.perf_counter()
            client.set_control(JAW_LABEL, JAW_VALUES[k % 2])
            latencies.append((client.next_image() - sent) * 1000.0)
        played = 0
        if sequence is not None:
            client.set_control(SEQUENCE_LABEL, sequence)
            client.next_image()  # its first frame
            client.drain()
            client.set_control(PLAY_LABEL, True)
            begin = time.perf_counter()
            while time.perf_counter() - begin < play_seconds:
                client.next_image()
                played += 1
            play_seconds = time.perf_counter() - begin
            client.set_control(PLAY_LABEL, True)  # pause
        return Measurement(width, height, latencies, sequence, sequence_fps, play_seconds, played)

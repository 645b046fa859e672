"""The viewer's server: viser's page with the controls, and the loop that renders the avatar from
each browser's camera and streams the image as the page's background."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import torch

from ..errors import BackendUnavailableError
from ..export.images import save_png
from ..render import available_backends, resolve_backend
from .camera import StartView, View, raster_camera
from .controls import POSE_SLIDERS, SliderSpec, expression_sliders
from .sequences import DriveSequence
from .state import AvatarScene, Frame

log = logging.getLogger(__name__)

RESOLUTIONS = ("128", "256", "384", "512", "768", "1024")
NO_SEQUENCE = "(sliders)"
IDLE_SECONDS = 0.002  # the render loop's poll when nothing changed: a small share of a frame's delay


def usable_backends(device: torch.device) -> list[str]:
    """'auto' and the installed backends that can draw on `device`."""
    out = ["auto"]
    for name in available_backends():
        try:
            resolve_backend(name, device)
        except BackendUnavailableError:
            continue
        out.append(name)
    return out


class Viewer:
    """One viser server showing one avatar. `start()` serves it; `stop()` ends the loop and the server."""

    def __init__(self, scene: AvatarScene, sequences: list[DriveSequence], start_view: StartView,
                 screenshot_dir: Path, host: str = "0.0.0.0", port: int = 8080, resolution: int = 256,
                 backend: str = "auto", n_expression: int = 10, fps: float = 25.0) -> None:
        import viser  # the `viewer` extra

        self.scene = scene
        self.sequences = {s.name: s for s in sequences}
        self.screenshot_dir = Path(screenshot_dir)
        self.fps = fps
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        initial = self.server.initial_camera
        initial.position, initial.look_at, initial.up, initial.fov = (start_view.position, start_view.look_at,
                                                                      start_view.up, start_view.fov)
        self._views: dict[int, tuple[View, int, int]] = {}  # client id -> (view, canvas width, height)
        self._drawn: dict[int, tuple] = {}  # client id -> what its last image showed
        self._last: dict[int, Frame] = {}  # client id -> its last image
        self._syncing = False  # the sliders are being set from the scene: not a user's move
        self._playing = False
        self._play_start = (0.0, 0)  # (clock, frame) when play was pressed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="viewer-render", daemon=True)
        self._build_gui(resolution, backend, n_expression)
        self.server.on_client_connect(self._connected)
        self.server.on_client_disconnect(lambda client: self._forget(client.client_id))

    # ---- the page --------------------------------------------------------------------------------

    def _build_gui(self, resolution: int, backend: str, n_expression: int) -> None:
        gui = self.server.gui
        with gui.add_folder("Render"):
            choices = tuple(sorted(set(RESOLUTIONS) | {str(resolution)}, key=int))
            self.resolution = gui.add_dropdown("resolution", choices, initial_value=str(resolution))
            backends = usable_backends(self.scene.device)
            self.backend = gui.add_dropdown("backend", tuple(backends),
                                            initial_value=backend if backend in backends else "auto")
            self.status = gui.add_markdown("waiting for a browser")
            self.show_points = gui.add_checkbox("canonical points", initial_value=False)
            self.show_points.on_update(lambda _: self._show_points(self.show_points.value))
            self.screenshot = gui.add_button("screenshot")
            self.screenshot.on_click(self._screenshot)
            self.screenshot_note = gui.add_markdown("")
        with gui.add_folder("Drive"):
            self.sequence = gui.add_dropdown("sequence", (NO_SEQUENCE, *self.sequences), initial_value=NO_SEQUENCE)
            self.sequence.on_update(lambda _: self._choose_sequence())
            self.play = gui.add_button("play / pause")
            self.play.on_click(lambda _: self._toggle_play())
            self.frame = gui.add_slider("frame", min=0, max=1, step=1, initial_value=0, disabled=True)
            self.frame.on_update(lambda _: self._frame_moved())
        self.reset = gui.add_button("reset")
        self.reset.on_click(lambda _: self._reset())
        self.sliders: list[tuple[SliderSpec, object]] = []
        count = min(n_expression, self.scene.num_expression)
        for title, specs in (("Pose", POSE_SLIDERS), ("Expression", expression_sliders(count))):
            with gui.add_folder(title):
                for spec in specs:
                    handle = gui.add_slider(spec.label, min=spec.low, max=spec.high, step=spec.step,
                                            initial_value=self._clamped(spec))
                    handle.on_update(lambda _, spec=spec, handle=handle: self._slider_moved(spec, handle.value))
                    self.sliders.append((spec, handle))

    def _clamped(self, spec: SliderSpec) -> float:
        value = self.scene.value(spec.what, spec.indices[0])
        return min(max(round(value / spec.step) * spec.step, spec.low), spec.high)

    def _sync_sliders(self) -> None:
        """Show the scene's values on the sliders without treating them as moves."""
        self._syncing = True
        try:
            for spec, handle in self.sliders:
                handle.value = self._clamped(spec)
        finally:
            self._syncing = False

    def _slider_moved(self, spec: SliderSpec, value: float) -> None:
        if not self._syncing:
            self.scene.set_entries(spec.what, spec.indices, value)

    def _reset(self) -> None:
        self._playing = False
        self.sequence.value = NO_SEQUENCE
        self.scene.reset()
        self._sync_sliders()

    # ---- driving sequences -----------------------------------------------------------------------

    def _current_sequence(self) -> DriveSequence | None:
        return self.sequences.get(self.sequence.value)

    def _choose_sequence(self) -> None:
        sequence = self._current_sequence()
        self._playing = False
        self.frame.disabled = sequence is None
        if sequence is not None:
            self.frame.max = max(len(sequence) - 1, 1)
            self._show_frame(0)

    def _show_frame(self, k: int) -> None:
        sequence = self._current_sequence()
        if sequence is None:
            return
        k = k % len(sequence)
        expression, pose = sequence.frame(k)
        self.scene.set_values(expression, pose)
        self._syncing = True
        try:
            self.frame.value = k
        finally:
            self._syncing = False
        self._sync_sliders()

    def _frame_moved(self) -> None:
        if not self._syncing:
            self._playing = False
            self._show_frame(int(self.frame.value))

    def _toggle_play(self) -> None:
        if self._current_sequence() is None:
            return
        self._playing = not self._playing
        self._play_start = (time.monotonic(), int(self.frame.value))

    def _advance(self) -> None:
        """While playing, show the frame the sequence's clock has reached (frames the machine cannot
        render in time are skipped)."""
        sequence = self._current_sequence()
        if sequence is None:
            return
        clock, first = self._play_start
        k = (first + int((time.monotonic() - clock) * self.fps)) % len(sequence)  # wraps: compare as shown
        if k != int(self.frame.value):
            self._show_frame(k)

    # ---- extras ----------------------------------------------------------------------------------

    def _show_points(self, visible: bool) -> None:
        if visible:
            points, colors = self.scene.canonical_points()
            self.server.scene.add_point_cloud("/canonical_points", points=points, colors=colors, point_size=0.002)
        else:
            self.server.scene.remove_by_name("/canonical_points")

    def _screenshot(self, event) -> None:
        frame = self._last.get(event.client.client_id) if event.client is not None else None
        if frame is None:
            return
        self.screenshot_dir.mkdir(parents=True, exist_ok=True)
        path = self.screenshot_dir / f"viewer_{time.strftime('%Y%m%d-%H%M%S')}_{len(list(self.screenshot_dir.glob('viewer_*.png')))}.png"
        save_png(path, torch.from_numpy(frame.rgb))
        self.screenshot_note.content = f"saved `{path}`"
        log.info("screenshot saved to %s", path)

    # ---- browsers and the render loop ------------------------------------------------------------

    def _connected(self, client) -> None:
        def moved(camera) -> None:
            self._views[client.client_id] = (View(tuple(camera.wxyz), tuple(camera.position), float(camera.fov)),
                                             camera.image_width, camera.image_height)
        client.camera.on_update(moved)

    def _forget(self, client_id: int) -> None:
        for table in (self._views, self._drawn, self._last):
            table.pop(client_id, None)

    def _render_clients(self) -> bool:
        """Render for every browser whose view or scene changed since its last image; whether any was."""
        rendered = False
        height = int(self.resolution.value)
        backend = self.backend.value
        for client in list(self.server.get_clients().values()):
            entry = self._views.get(client.client_id)
            if entry is None:
                continue
            view, canvas_width, canvas_height = entry
            width = max(8, round(height * canvas_width / max(canvas_height, 1)))
            key = (self.scene.version, view, width, height, backend)
            if self._drawn.get(client.client_id) == key:
                continue
            frame = self.scene.render(raster_camera(view, width, height, self.scene.device), backend)
            client.scene.set_background_image(frame.rgb, format="jpeg", jpeg_quality=90)
            client.flush()  # sent now, not at the end of viser's 1/60 s message window
            self._drawn[client.client_id] = key
            self._last[client.client_id] = frame
            self.status.content = f"{width}x{height}, {frame.seconds * 1000:.0f} ms a frame ({1 / max(frame.seconds, 1e-6):.1f} FPS)"
            rendered = True
        return rendered

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._playing:
                    self._advance()
                if not self._render_clients():
                    time.sleep(IDLE_SECONDS)
            except Exception:  # keep serving: one failed frame is logged, the next may succeed
                log.exception("rendering failed")
                time.sleep(1.0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.server.stop()

    def wait(self) -> None:
        """Serve until interrupted (Ctrl-C)."""
        try:
            while self._thread.is_alive():
                time.sleep(0.5)
        finally:
            self.stop()

"""A client that speaks the viewer page's websocket protocol (viser's): it sends what the page sends
(its camera, the controls' changes) and receives what the page receives (the controls, the streamed
images). It lets the viewer be timed from outside the server on a machine without a browser.

What it does not include is the browser's own share: decoding the JPEG and drawing it (a few
milliseconds at 512x512)."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

from ..errors import DynAvatarError

IMAGE_MESSAGE = "BackgroundImageMessage"
CAMERA_MESSAGE = "ViewerCameraMessage"
UPDATE_MESSAGE = "GuiUpdateMessage"


class ProtocolError(DynAvatarError):
    """The server sent something this client does not understand (another viser wire format)."""


def decode_frame(data: bytes) -> list[dict]:
    """The messages of one websocket frame from the server.

    viser 1.1's wire format: [8 bytes] length of the msgpack payload, [8 bytes] length of its zstd
    compression, the compressed payload (a dict whose "messages" are dicts with a "type"), then the
    raw binary buffers its placeholders point into (not needed here)."""
    import msgspec
    import zstandard

    if len(data) < 16:
        raise ProtocolError(f"a frame of {len(data)} bytes is shorter than viser's 16-byte header")
    size = int.from_bytes(data[:8], "little")
    compressed = int.from_bytes(data[8:16], "little")
    try:
        payload = msgspec.msgpack.decode(
            zstandard.ZstdDecompressor().decompress(data[16:16 + compressed], max_output_size=size))
    except (zstandard.ZstdError, msgspec.DecodeError) as error:
        raise ProtocolError(f"cannot read a frame of the viewer's server ({error}): this client speaks viser "
                            f"1.1's wire format") from error
    return list(payload.get("messages", ()))


def encode_message(message: dict) -> bytes:
    """A client-to-server message (a dict with its "type") as the page sends it: plain msgpack."""
    import msgspec

    return msgspec.msgpack.encode(message)


@dataclass(frozen=True)
class CameraSpec:
    """The page's camera: camera-to-world rotation (w, x, y, z), position, vertical field of view
    (radians), look-at point and up direction, canvas size in pixels."""

    wxyz: tuple[float, float, float, float]
    position: tuple[float, float, float]
    fov: float
    look_at: tuple[float, float, float]
    up: tuple[float, float, float]
    width: int
    height: int


class PageClient:
    """One connection to a viewer, as a page would hold it. Images arriving are timestamped
    (time.perf_counter) on a background thread; `controls` maps each control's label to its id.
    Use as a context manager."""

    def __init__(self, url: str, timeout: float = 600.0) -> None:
        import viser
        import websocket  # websocket-client (the `viewer` extra)

        self._socket = websocket.create_connection(url, timeout=timeout,
                                                   subprotocols=[f"viser-v{viser.__version__}"])
        self._socket.settimeout(None)
        self.controls: dict[str, str] = {}
        self._images: queue.Queue[float] = queue.Queue()
        self._error: BaseException | None = None
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="page-client", daemon=True)
        self._reader.start()

    def __enter__(self) -> "PageClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        self._socket.close()
        self._reader.join(timeout=10)

    def _read(self) -> None:
        import websocket

        try:
            while not self._closed.is_set():
                data = self._socket.recv()
                arrived = time.perf_counter()
                if not isinstance(data, bytes):
                    continue
                for message in decode_frame(data):
                    kind = message.get("type", "")
                    props = message.get("props")
                    if kind == IMAGE_MESSAGE:
                        self._images.put(arrived)
                    elif kind.startswith("Gui") and isinstance(props, dict) and "label" in props:
                        self.controls[props["label"]] = message["uuid"]
        except (websocket.WebSocketException, OSError) as error:
            if not self._closed.is_set():
                self._error = error
        except ProtocolError as error:
            self._error = error

    def send_camera(self, camera: CameraSpec) -> None:
        self._socket.send_binary(encode_message({
            "type": CAMERA_MESSAGE, "wxyz": list(camera.wxyz), "position": list(camera.position),
            "fov": camera.fov, "near": 0.01, "far": 1000.0, "image_height": camera.height,
            "image_width": camera.width, "look_at": list(camera.look_at), "up_direction": list(camera.up)}))

    def set_control(self, label: str, value) -> None:
        """Change a control as the page does when the user moves it (a button: value True)."""
        self._socket.send_binary(encode_message({"type": UPDATE_MESSAGE, "uuid": self.control(label),
                                                 "updates": {"value": value}}))

    def control(self, label: str, timeout: float = 600.0) -> str:
        """The id of the control labelled `label`, once the server has sent it."""
        deadline = time.monotonic() + timeout
        while label not in self.controls:
            self._raise_if_failed()
            if time.monotonic() > deadline:
                raise ProtocolError(f"the viewer sent no control labelled {label!r} within {timeout:.0f} s")
            time.sleep(0.01)
        return self.controls[label]

    def drain(self) -> int:
        """Forget the images that arrived so far; how many there were."""
        count = 0
        while True:
            try:
                self._images.get_nowait()
            except queue.Empty:
                return count
            count += 1

    def next_image(self, timeout: float = 600.0) -> float:
        """When the next image arrived (perf_counter seconds); waits for it."""
        deadline = time.monotonic() + timeout
        while True:
            self._raise_if_failed()
            try:
                return self._images.get(timeout=0.05)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise ProtocolError(f"no image from the viewer within {timeout:.0f} s") from None

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise ProtocolError(f"the connection to the viewer failed: {self._error}") from self._error

"""A cache of the avatar's frame-independent values, kept while the avatar cannot change."""

from __future__ import annotations

from typing import Any, Callable, Hashable


class CanonicalCache:
    """Named values computed from an avatar's points, parameters and buffers (the canonical FLAME
    frame, its normals, the canonical state), each kept with the device and dtype it was built on.

    A value is served again only while the avatar's tensors are still on that device and dtype
    (so a `.to(device)` or `.to(dtype)` is noticed without further help) and until `clear()`.
    The cache cannot see in-place changes of weights; it is cleared by whoever makes them:

    - the avatar itself: `set_points`, `set_point_radius` and `load_state_dict` clear it;
    - training: a computation of the canonical state with gradients to the parameters drops the
      cached state (an optimizer step may follow it; see `Avatar.canonical_state`);
    - anyone else who changes the avatar's weights or buffers in place while it is frozen (a
      parameter edited under `torch.no_grad()`, a state dict loaded into one of its networks, a
      network replaced) must call `clear()`.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Hashable, Any]] = {}

    def clear(self) -> None:
        """Forget every value."""
        self._entries.clear()

    def discard(self, name: str) -> None:
        """Forget one value."""
        self._entries.pop(name, None)

    def get(self, name: str, built_on: Hashable, compute: Callable[[], Any]) -> Any:
        """The value `name` if it was built on `built_on` (the avatar's device and dtype), else
        `compute()`, kept for the next call."""
        entry = self._entries.get(name)
        if entry is None or entry[0] != built_on:
            entry = (built_on, compute())
            self._entries[name] = entry
        return entry[1]

"""The one error type of preprocessing: a problem with the user's input (a missing or unreadable
video, no face found, a bad option, a missing optional dependency), named with what to do about it."""

from ..errors import DynAvatarError


class PreprocessError(DynAvatarError):
    """Preprocessing cannot go on: the message names the file, frame or option at fault and the fix."""

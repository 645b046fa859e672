"""User-facing errors: each one names the file, key or frame at fault and what to do about it.

Command-line scripts catch `DynAvatarError` and print its message alone (no traceback), because
these are problems with the user's input, not bugs.
"""


class DynAvatarError(Exception):
    """Base class of every error a user can cause with their input."""


class ConfigError(DynAvatarError):
    """A .conf file or a command-line override is malformed, has an unknown key or a wrong type."""


class FlameModelError(DynAvatarError):
    """The FLAME model or landmark file is missing or is not a FLAME file."""


class DatasetError(DynAvatarError):
    """A dataset folder, image, mask or flame_params.json is missing or malformed."""


class CheckpointError(DynAvatarError):
    """A checkpoint folder or epoch is missing, or a checkpoint does not fit the model."""


class BackendUnavailableError(DynAvatarError):
    """A rasterizer backend was requested that is not installed or cannot run on this device."""


class TrainingDivergedError(DynAvatarError):
    """Training produced non-finite losses or gradients step after step (e.g. a learning rate too high)."""


class OutputError(DynAvatarError):
    """An output file cannot be written (a folder given for a file, an unwritable place, a full disk)."""


class ExperimentInUseError(DynAvatarError):
    """Another run is writing the experiment folder (its lock is held by a running process)."""


class TrainingCollapsedError(DynAvatarError):
    """Every Gaussian became transparent during training, so the avatar renders nothing and no gradient
    can bring it back (e.g. a learning rate too high for the first steps: see train.warmup_epochs)."""

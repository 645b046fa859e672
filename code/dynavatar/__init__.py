"""DynAvatar: animatable 3D Gaussian-splatting head avatars from one monocular FLAME-tracked video."""

__version__ = "0.1.0"

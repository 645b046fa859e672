"""FLAME: model files (real FLAME 2020 or the synthetic head), linear blend skinning, landmarks, and
how far frames' FLAME inputs lie from a set of others (`novelty`)."""

from .flame import FLAME, FLAME_SCALE, FlameOutput, face_landmarks
from .model_file import FlameModelFile, LandmarkEmbedding, load_flame_model, load_landmark_embedding
from .synthetic_head import build_synthetic_flame, synthetic_flame_files, write_synthetic_flame

__all__ = [
    "FLAME", "FLAME_SCALE", "FlameOutput", "face_landmarks", "FlameModelFile", "LandmarkEmbedding",
    "load_flame_model", "load_landmark_embedding", "build_synthetic_flame", "synthetic_flame_files",
    "write_synthetic_flame",
]

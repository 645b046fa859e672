"""Exports: standard 3DGS .ply (`ply`), evaluation images (`images`), mp4 videos (`video`).

Submodules are imported on use, so importing the package pulls in neither plyfile nor imageio.
"""

"""Data engine: scene sampling, Blender rendering, voxels, shards and Ray orchestration."""
__version__ = "0.1.0"

"""Rendering: a long-lived Blender worker process behind a narrow interface (spec in, images out)."""

from datagen.render.worker import BlenderWorker, RenderCrash, RenderSettings

__all__ = ["BlenderWorker", "RenderCrash", "RenderSettings"]

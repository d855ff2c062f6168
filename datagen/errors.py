"""Errors that cost one scene, never the run: the runner records them in failures.jsonl."""

from __future__ import annotations


class SceneFailure(Exception):
    """A scene could not be made; ``stage`` names the pipeline stage, ``reason`` says why."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"[{stage}] {reason}")
        self.stage = stage
        self.reason = reason

    def to_record(self, scene_id: str) -> dict:
        return {"scene_id": scene_id, "stage": self.stage, "reason": self.reason}

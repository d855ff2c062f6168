"""A long-lived Blender process per data-engine worker, restarted when it dies or after N scenes.

bpy runs in a child process (spawned, so it never inherits Ray's or torch's threads) that keeps
asset meshes cached across scenes. A segfault or abort inside Blender kills only the child: the
parent raises ``RenderCrash`` for that scene and starts a fresh child for the next one. Recycling
after ``recycle_after`` scenes bounds memory growth (DEPENDENCIES.md measured ~1 MB per scene).
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection


class RenderCrash(RuntimeError):
    """The Blender process died or hung while rendering a scene."""


class RenderError(RuntimeError):
    """Blender raised an exception for this scene (the process is still usable)."""


# "authored": glTF/OBJ assets keep the materials Blender's importer builds when the imported triangles
# equal the catalog's (else a recorded fallback); "simple": base colour only (docs/MATERIALS.md)
MATERIAL_MODES = ("authored", "simple")


@dataclass(frozen=True)
class RenderSettings:
    samples: int = 32
    denoise: bool = True
    floor: bool = True
    device: str = "auto"  # auto | cpu | gpu
    threads: int = 0  # 0 = all cores this process may use
    crash_on_scene: str | None = None  # test hook: the child exits hard on this scene id
    materials: str = "authored"  # one of MATERIAL_MODES

    def __post_init__(self) -> None:
        if self.materials not in MATERIAL_MODES:
            raise ValueError(f"materials must be one of {', '.join(MATERIAL_MODES)}, got {self.materials!r}")


def _child_entry(fd: int) -> None:
    _child_main(Connection(fd))


def _child_main(conn) -> None:
    from datagen.render import blender_scene

    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        spec, settings = msg
        if settings.get("crash_on_scene") and settings["crash_on_scene"] == spec.get("scene_id"):
            sys.stderr.write(f"simulated Blender abort on scene {spec.get('scene_id')}\n")
            sys.stderr.flush()
            os._exit(134)  # simulate Blender aborting
        try:
            materials = blender_scene.build_scene(spec, settings)
            seed = int(spec.get("seed", 0))
            views = [blender_scene.render_view(cam, seed * 131 + v) for v, cam in enumerate(spec["cameras"])]
            for view in views:
                view["materials"] = list(materials)
            conn.send(("ok", views))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


class BlenderWorker:
    """Renders scene specs in a child Blender process. Use as a context manager."""

    def __init__(self, settings: RenderSettings = RenderSettings(), recycle_after: int = 50, timeout_s: float = 900.0):
        self.settings = settings
        self.recycle_after = recycle_after
        self.timeout_s = timeout_s
        self._proc = None
        self._conn = None
        self._scenes = 0
        self._stderr = None  # the child's stderr, kept in a temporary file for crash reports

    def _start(self) -> None:
        # A fresh interpreter (not fork, not multiprocessing's spawn, which re-imports __main__):
        # the child gets one end of a pipe by file descriptor; Blender's own stdout stays separate.
        import tempfile

        parent, child = Pipe()
        fd = child.fileno()
        self._stderr = tempfile.TemporaryFile(prefix="iscene-blender-stderr")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", f"from datagen.render.worker import _child_entry; _child_entry({fd})"],
            pass_fds=(fd,), stdout=subprocess.DEVNULL, stderr=None if os.environ.get("ISCENE_BLENDER_LOG") else self._stderr,
        )
        child.close()
        self._conn = parent
        self._scenes = 0

    def close(self) -> None:
        if self._proc is not None:
            try:
                self._conn.send(None)
                self._proc.wait(timeout=10)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                pass
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            self._conn.close()
        if self._stderr is not None:
            self._stderr.close()
        self._proc = self._conn = self._stderr = None

    def stderr_tail(self, lines: int = 15, max_chars: int = 2000) -> str:
        """The last lines Blender wrote to stderr (what a crash report needs), as one string."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - 16384))
        text = self._stderr.read().decode(errors="replace")
        return " | ".join(l.strip() for l in text.splitlines()[-lines:] if l.strip())[-max_chars:]

    def __enter__(self) -> "BlenderWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def render(self, spec: dict) -> list[dict]:
        """One dict per camera: ``rgb`` (H, W, 3) uint8, ``inst`` (H, W) uint16, ``depth`` float32,
        and ``materials``: per instance (spec order) ``"authored"``, ``"simple"`` or ``"fallback: <reason>"``."""
        if self._proc is None or self._proc.poll() is not None or self._scenes >= self.recycle_after:
            self.close()
            self._start()
        self._scenes += 1
        try:
            self._conn.send((spec, asdict(self.settings)))
            if not self._conn.poll(self.timeout_s):
                tail = self.stderr_tail()
                self.close()
                raise RenderCrash(f"Blender did not answer within {self.timeout_s:.0f} s" + (f"; its last stderr: {tail}" if tail else ""))
            reply = self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as exc:
            code = self._proc.wait() if self._proc is not None else None
            tail = self.stderr_tail()
            self.close()
            raise RenderCrash(f"Blender process died (exit code {code}): {type(exc).__name__}"
                              + (f"; its last stderr: {tail}" if tail else "")) from None
        if reply[0] == "error":
            raise RenderError(reply[1])
        return reply[1]

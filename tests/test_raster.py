"""The compiled rasteriser: same pixels and depths as the numpy reference on real meshes, and a
silhouette worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datagen.raster import rasterize
from iscene_core import space

MESHES = ["bunny.ply", "SheenCloth.glb", "Mixer.glb", "table.glb", "Duck.glb", "counter.unitsmm.STL", "wallhole.obj"]


def _camera(rng: np.random.Generator, width: int, distance: float = 1.6):
    eye = rng.normal(size=3)
    eye = distance * eye / np.linalg.norm(eye)
    f = 0.5 * width / np.tan(np.radians(25.0))
    K = np.array([[f, 0.0, width / 2], [0.0, f, width / 2], [0.0, 0.0, 1.0]])
    return K, space.look_at_world_to_cam(eye, np.zeros(3))


@pytest.mark.parametrize("name", MESHES)
def test_compiled_rasteriser_equals_the_numpy_reference_on_real_meshes(shared_assets: Path, name: str):
    from assets_manifest import load_mesh

    m = load_mesh(shared_assets / name)
    v = np.asarray(m.vertices, dtype=np.float64)
    v = (v - 0.5 * (v.min(0) + v.max(0))) / np.ptp(v, axis=0).max()
    rng = np.random.default_rng(len(name))
    # 0.4: the camera sits inside the mesh's box, so some triangles cross the near plane
    for width, distance in ((128, 1.6), (331, 1.6), (96, 0.4)):
        K, w2c = _camera(rng, width, distance)
        mask, depth = rasterize(K, w2c, v, m.faces, width, width + 7, with_depth=True)
        ref_mask, ref_depth = rasterize(K, w2c, v, m.faces, width, width + 7, with_depth=True, method="numpy")
        assert mask.any() or distance < 1
        np.testing.assert_array_equal(mask, ref_mask)
        np.testing.assert_array_equal(depth, ref_depth)  # bit for bit, inf where empty
        np.testing.assert_array_equal(rasterize(K, w2c, v, m.faces, width, width + 7), mask)


def test_a_square_facing_the_camera_covers_the_pixels_whose_centres_it_contains():
    # the square [-0.5, 0.5]^2 at depth 2 through f = 10, c = 8: u = 10 x / 2 + 8 spans [5.5, 10.5]
    K = np.array([[10.0, 0.0, 8.0], [0.0, 10.0, 8.0], [0.0, 0.0, 1.0]])
    w2c = np.eye(4)
    v = np.array([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.5, 0.5, 2.0], [-0.5, 0.5, 2.0]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    mask, depth = rasterize(K, w2c, v, f, 16, 16, with_depth=True)
    want = np.zeros((16, 16), bool)
    want[5:11, 5:11] = True  # centres 5.5 .. 10.5 are inside or on the edge
    np.testing.assert_array_equal(mask, want)
    np.testing.assert_allclose(depth[mask], 2.0)
    assert np.isinf(depth[~mask]).all()
    # behind the near plane: nothing
    assert not rasterize(K, w2c, v * [1, 1, -1], f, 16, 16).any()


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method"):
        rasterize(np.eye(3), np.eye(4), np.zeros((3, 3)), np.array([[0, 1, 2]]), 4, 4, method="gl")


def test_compiled_loops_work_where_their_cache_cannot_be_written(tmp_path):
    """A read-only install: numba cannot write its cache and compiles in memory instead of failing."""
    import os
    import subprocess
    import sys

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would go")
    code = ("import numpy as np\n"
            "from datagen.raster import rasterize\n"
            "from datagen.voxelize import voxelize_surface\n"
            "K = np.array([[10.0, 0, 8], [0, 10, 8], [0, 0, 1]])\n"
            "v = np.array([[-.5, -.5, 2], [.5, -.5, 2], [.5, .5, 2], [-.5, .5, 2]])\n"
            "f = np.array([[0, 1, 2], [0, 2, 3]])\n"
            "print(int(rasterize(K, np.eye(4), v, f, 16, 16).sum()), len(voxelize_surface(v - [0, 0, 2], f)))\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(blocker / "cache")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    pixels, voxels = map(int, out.stdout.split())
    assert pixels == 36 and voxels > 0

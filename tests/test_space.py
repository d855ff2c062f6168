"""View-space conventions: the single source of truth every stage relies on."""

from __future__ import annotations

import numpy as np
import pytest

from iscene_core import space


def test_view_axes_are_right_forward_up():
    # A point 1 m ahead of the camera, 0.5 m to the right and 0.25 m above the optical axis
    p_cam = np.array([[0.5, -0.25, 1.0]])  # OpenCV: y down, so "above" is negative y
    p_view = p_cam @ space.VIEW_FROM_CAM.T
    np.testing.assert_allclose(p_view, [[0.5, 1.0, 0.25]])
    assert np.isclose(np.linalg.det(space.VIEW_FROM_CAM), 1.0)


def test_look_at_level_camera_keeps_world_up_as_grid_up():
    w2c = space.look_at_world_to_cam(eye=[0.0, -3.0, 1.0], target=[0.0, 0.0, 1.0])
    top = space.transform_points(w2c, [[0.0, 0.0, 2.0]])
    right = space.transform_points(w2c, [[1.0, 0.0, 1.0]])
    centre = space.transform_points(w2c, [[0.0, 0.0, 1.0]])
    np.testing.assert_allclose(centre, [[0.0, 0.0, 3.0]], atol=1e-12)
    assert top[0, 1] < 0  # image y points down
    assert right[0, 0] > 0  # +X world is to the right when looking along +Y
    # In the view grid, world up stays up
    c2g = space.fit_cam_to_grid(np.vstack([top, right, centre]))
    g_top, g_centre = space.transform_points(c2g, np.vstack([top, centre]))
    assert g_top[2] > g_centre[2]


def test_fit_grid_maps_into_cube_and_fills_largest_axis():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(500, 3)) * [3.0, 1.0, 0.5] + [10.0, -2.0, 4.0]
    m = space.fit_world_to_grid(pts)
    g = space.transform_points(m, pts)
    assert g.min() >= -0.5 and g.max() < 0.5
    assert np.isclose(np.ptp(g[:, 0]), 1.0, atol=1e-4)
    # Extremes land in the first and last voxel, never clipped
    idx = np.floor((g + 0.5) * 64).astype(int)
    assert idx[:, 0].min() == 0 and idx[:, 0].max() == 63


def test_invert_rigid_scale_roundtrip():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-1, 1, size=(50, 3))
    w2c = space.look_at_world_to_cam([2.0, -3.0, 1.5], [0.1, 0.2, 0.3])
    c2g = space.fit_cam_to_grid(space.transform_points(w2c, pts))
    full = c2g @ w2c
    back = space.transform_points(space.invert_rigid_scale(full), space.transform_points(full, pts))
    np.testing.assert_allclose(back, pts, atol=1e-10)


def test_voxel_index_convention_and_dense_roundtrip():
    R = 64
    # The centre of voxel (i, j, k) maps back to (i, j, k)
    coords = np.array([[0, 0, 0], [63, 63, 63], [10, 20, 30]])
    centres = space.voxel_centers(coords, R)
    np.testing.assert_array_equal(space.grid_to_voxel(centres, R), coords)
    # Lower face of voxel 0 is -0.5
    np.testing.assert_allclose(space.voxel_centers([[0, 0, 0]], R), [[-0.5 + 0.5 / R] * 3])
    dense = space.coords_to_dense(coords, R)
    assert dense.sum() == 3 and dense[10, 20, 30]
    np.testing.assert_array_equal(space.dense_to_coords(dense), np.sort(coords.astype(np.uint8), axis=0)[[0, 1, 2]])
    with pytest.raises(ValueError):
        space.coords_to_dense(np.array([[64, 0, 0]]), R)


def test_projection_pixel_centres():
    K = np.array([[100.0, 0, 50.0], [0, 100.0, 40.0], [0, 0, 1]])
    w2c = np.eye(4)
    uv, z = space.project_points(K, w2c, [[0.0, 0.0, 2.0], [0.2, -0.1, 1.0]])
    np.testing.assert_allclose(uv, [[50.0, 40.0], [70.0, 30.0]])
    np.testing.assert_allclose(z, [2.0, 1.0])


def test_fit_rejects_degenerate_input():
    with pytest.raises(ValueError):
        space.fit_world_to_grid(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        space.fit_world_to_grid(np.array([[np.nan, 0, 0], [1, 1, 1]]))

"""Stable resting poses of an asset, computed once at ingest and stored in its catalog row.

An asset only ever shown in its authored orientation cannot appear at all when that orientation
does not rest on a floor (a monkey head, a cloth, a bunny scanned on its side). Following the
data-engine practice of sampling physically plausible orientations, each asset gets the resting
poses of its convex hull on a plane with their probabilities (``trimesh.poses.compute_stable_poses``:
the chance of landing on each hull facet when dropped in a random orientation), and the layout
samples among them.

``compute_stable_poses`` costs O(hull facets x facets); on a dense sphere (30k hull facets) it takes
over a minute, so the hull is simplified to at most ``MAX_HULL_FACES`` first. The poses are then
approximate (a facet of the simplified hull); the rigid-body settling step corrects the last
millimetres.
"""

from __future__ import annotations

import numpy as np
import trimesh

MAX_HULL_FACES = 400
MAX_POSES = 8
MIN_PROBABILITY = 0.01
UP_TOLERANCE_DEG = 10.0


def center_of_mass(mesh: trimesh.Trimesh) -> np.ndarray:
    """Volume centroid of a watertight mesh, area-weighted surface centroid otherwise (a shell)."""
    if mesh.is_watertight and mesh.volume > 1e-12:
        return np.asarray(mesh.center_mass, dtype=np.float64)
    return mesh.triangles_center.T @ mesh.area_faces / mesh.area


def _hull(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    hull = mesh.convex_hull
    if len(hull.faces) > MAX_HULL_FACES:
        try:
            hull = hull.simplify_quadric_decimation(face_count=MAX_HULL_FACES).convex_hull
        except Exception:  # decimation unavailable or failed: subsample the hull's vertices instead
            rng = np.random.default_rng(0)
            idx = rng.choice(len(hull.vertices), size=min(len(hull.vertices), MAX_HULL_FACES // 2), replace=False)
            hull = trimesh.Trimesh(hull.vertices[idx]).convex_hull
    return hull


def all_poses(mesh: trimesh.Trimesh, com: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every resting pose of the (simplified) hull: (rotations (K, 3, 3), probabilities (K,)).

    Rotations act on the mesh's own frame (the one ``mesh`` is in).
    """
    com = center_of_mass(mesh) if com is None else np.asarray(com, dtype=np.float64)
    hull = _hull(mesh)
    with np.errstate(invalid="ignore", divide="ignore"):
        transforms, probs = trimesh.poses.compute_stable_poses(hull, center_mass=com)
    probs = np.nan_to_num(np.asarray(probs, dtype=np.float64))
    if len(probs) == 0:
        return np.eye(3)[None], np.ones(1)
    return np.stack([np.asarray(t)[:3, :3] for t in transforms]), probs


def select(rotations: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The poses the layout samples from: the most probable ``MAX_POSES`` with probability >=
    ``MIN_PROBABILITY`` (or the single most probable one when none reaches it, e.g. a sphere),
    renormalised to sum to 1."""
    order = np.argsort(-probs, kind="stable")
    keep = [i for i in order[:MAX_POSES] if probs[i] >= MIN_PROBABILITY] or [int(order[0])]
    rots = rotations[keep]
    p = probs[keep]
    p = p / p.sum() if p.sum() > 0 else np.full(len(keep), 1.0 / len(keep))
    return rots, p


def up_probability(rotations: np.ndarray, probabilities: np.ndarray, axis: np.ndarray) -> float:
    """Probability mass of the poses that keep ``axis`` (mesh frame) pointing up within 10 degrees."""
    ups = np.einsum("kij,i->kj", rotations, np.array([0.0, 0.0, 1.0]))  # R^T e_z: the mesh axis made vertical
    close = ups @ (np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)) > np.cos(np.radians(UP_TOLERANCE_DEG))
    return float(probabilities[close].sum())


def to_record(rotations: np.ndarray, probabilities: np.ndarray) -> list[dict]:
    """Plain-data form stored in the catalog row."""
    return [{"rotation": np.round(r, 10).tolist(), "probability": float(p)} for r, p in zip(rotations, probabilities)]


def from_record(poses: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    if not poses:
        return np.eye(3)[None], np.ones(1)
    rots = np.array([p["rotation"] for p in poses], dtype=np.float64)
    probs = np.array([p["probability"] for p in poses], dtype=np.float64)
    return rots, probs / probs.sum()

"""Chamfer distance and F-score in every variant the peers use (docs/EVAL.md, section 1).

Papers disagree on three switches, so each is explicit here instead of hidden in a default:
- ``squared``: nearest-neighbour distances squared (MIDI, SceneGen, DepR/pytorch3d) or plain (Gen3DSR);
- ``reduce``: the two directional means ``summed`` (MIDI, SceneGen, pytorch3d) or ``halved`` (Gen3DSR);
- F-score threshold on plain or squared distances (DepR), strict ``<`` or ``<=``.
Both directions come from one pair of KD-tree queries (``scipy.spatial.cKDTree``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["PointSpec", "nn_distances", "chamfer", "fscore", "point_scores"]


@dataclass(frozen=True)
class PointSpec:
    """How a protocol turns two point sets into CD and F (see the module doc)."""

    cd_squared: bool = True
    cd_reduce: str = "sum"  # sum | half
    f_squared: bool = False
    f_strict: bool = True
    taus: tuple[float, ...] = (0.1,)


def nn_distances(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain nearest-neighbour distances p->q and q->p (float64)."""
    p = np.asarray(p, dtype=np.float64).reshape(-1, 3)
    q = np.asarray(q, dtype=np.float64).reshape(-1, 3)
    return cKDTree(q).query(p)[0], cKDTree(p).query(q)[0]


def chamfer(d_pq: np.ndarray, d_qp: np.ndarray, squared: bool = True, reduce: str = "sum") -> float:
    """Chamfer distance from directional NN distances; ``inf`` when either side is empty."""
    if len(d_pq) == 0 or len(d_qp) == 0:
        return float("inf")
    a, b = (d_pq**2, d_qp**2) if squared else (d_pq, d_qp)
    total = float(a.mean() + b.mean())
    if reduce == "sum":
        return total
    if reduce == "half":
        return 0.5 * total
    raise ValueError(f"chamfer reduce must be 'sum' or 'half', got {reduce!r}")


def fscore(d_pq: np.ndarray, d_qp: np.ndarray, tau: float, squared: bool = False, strict: bool = True) -> tuple[float, float, float]:
    """(F, precision, recall) in percent; precision = share of predicted points near the reference."""
    if len(d_pq) == 0 or len(d_qp) == 0:
        return 0.0, 0.0, 0.0
    a, b = (d_pq**2, d_qp**2) if squared else (d_pq, d_qp)
    if strict:
        precision, recall = float((a < tau).mean()), float((b < tau).mean())
    else:
        precision, recall = float((a <= tau).mean()), float((b <= tau).mean())
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return 100.0 * f, 100.0 * precision, 100.0 * recall


def point_scores(pred: np.ndarray, gt: np.ndarray, spec: PointSpec) -> dict[str, float]:
    """CD, the one-way CD pred->GT, and F / precision / recall at every ``spec.taus``."""
    d_pq, d_qp = nn_distances(pred, gt)
    out = {"cd": chamfer(d_pq, d_qp, spec.cd_squared, spec.cd_reduce)}
    if len(d_pq) and len(d_qp):
        one = d_pq**2 if spec.cd_squared else d_pq
        out["cd_pred_to_gt"] = float(one.mean())
    else:
        out["cd_pred_to_gt"] = float("inf")
    for k, tau in enumerate(spec.taus):
        f, p, r = fscore(d_pq, d_qp, tau, spec.f_squared, spec.f_strict)
        suffix = "" if k == 0 else f"@{tau:g}"
        out["f" + suffix], out["precision" + suffix], out["recall" + suffix] = f, p, r
    return out

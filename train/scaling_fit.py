"""Scaling laws: fit ``y = a x^-b + c`` with bootstrap confidence intervals, extrapolate, plot.

A scaling study asks how a metric moves with data or compute, and whether the trend predicts the
next decade. ``c`` is the irreducible floor (or ceiling for a metric that grows: ``a`` may then be
negative). The fit is nonlinear least squares (``scipy.optimize.least_squares``) on ``x`` scaled by
its geometric mean so the parameters are well conditioned whatever the units, started from a grid
of exponents (the problem has local minima; bootstrap refits start from the estimate) and bounded to
``0 <= b <= 10``. Uncertainty comes from a pairs bootstrap: points are resampled with replacement and refit, and every reported interval
(parameters and the extrapolated value) is the 2.5-97.5 percentile band of those refits.

    fit = fit_power_law(x, y)                 # >= 4 points with the offset, >= 3 without
    fit.b, fit.ci["b"], fit.extrapolate()     # exponent, its 95% interval, value at 10 x max(x)
    plot_fit(fit, "scaling.png", xlabel="training scenes", ylabel="1 - IoU-B")
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

B_MAX = 10.0
B_STARTS = (0.05, 0.2, 0.5, 1.0, 2.0)


class FitError(ValueError):
    """Data the fit cannot use (too few points, non-positive x, NaN): the message says why."""


@dataclass
class PowerLawFit:
    """Result of :func:`fit_power_law`; ``a`` is in the units of the original ``x``."""

    a: float
    b: float
    c: float
    offset: bool
    x: np.ndarray
    y: np.ndarray
    rmse: float
    boot: np.ndarray = field(repr=False)  # (n_ok, 3): a, b, c of each bootstrap refit
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    level: float = 0.95

    def predict(self, x) -> np.ndarray:
        return self.a * np.asarray(x, dtype=float) ** (-self.b) + self.c

    def predict_interval(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Bootstrap percentile band of the prediction at ``x``."""
        x = np.atleast_1d(np.asarray(x, dtype=float))
        if len(self.boot) == 0:
            nan = np.full(x.shape, np.nan)
            return nan, nan
        preds = self.boot[:, :1] * x[None] ** (-self.boot[:, 1:2]) + self.boot[:, 2:3]
        q = (1 - self.level) / 2
        return np.quantile(preds, q, axis=0), np.quantile(preds, 1 - q, axis=0)

    def extrapolate(self, factor: float = 10.0) -> dict:
        """Value and interval at ``factor`` x the largest x (the next decade by default)."""
        x_next = float(self.x.max() * factor)
        lo, hi = self.predict_interval(x_next)
        return {"x": x_next, "y": float(self.predict(x_next)), "lo": float(lo[0]), "hi": float(hi[0])}

    def to_dict(self) -> dict:
        return {"model": "y = a * x^-b + c" if self.offset else "y = a * x^-b", "a": self.a, "b": self.b, "c": self.c,
                "ci": {k: list(v) for k, v in self.ci.items()}, "level": self.level, "rmse": self.rmse,
                "points": int(len(self.x)), "bootstrap_fits": int(len(self.boot)), "extrapolation": self.extrapolate()}


def _check(x, y, offset: bool) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise FitError(f"x and y differ in length ({len(x)} vs {len(y)})")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise FitError("x and y must be finite (a NaN or inf point: drop the failed cell first)")
    if (x <= 0).any():
        raise FitError("x must be > 0 for a power law")
    need = 3 if offset else 2
    distinct = len(np.unique(x))
    if distinct < need or len(x) < need + 1:
        raise FitError(f"too few points for y = a x^-b{' + c' if offset else ''}: {len(x)} points at {distinct} distinct x; "
                       f"need at least {need} distinct x and {need + 1} points (more sizes or seeds"
                       f"{', or fit without the offset c' if offset else ''})")
    return x, y


def _fit_once(x: np.ndarray, y: np.ndarray, offset: bool, starts: tuple = B_STARTS) -> tuple[np.ndarray, float] | None:
    """Best (a, b, c) over starting exponents ``starts``, in units of the original x; None if none converged."""
    from scipy.optimize import least_squares

    x0 = float(np.exp(np.mean(np.log(x))))
    u = x / x0
    best = None
    for b0 in starts:
        # start: with b fixed, a and c follow from linear least squares
        basis = np.stack([u ** -b0, np.ones_like(u)], 1) if offset else (u ** -b0)[:, None]
        coef = np.linalg.lstsq(basis, y, rcond=None)[0]
        p0 = [coef[0], b0] + ([coef[1]] if offset else [])

        def resid(p):
            return p[0] * u ** (-p[1]) + (p[2] if offset else 0.0) - y

        lb = [-np.inf, 0.0] + ([-np.inf] if offset else [])
        ub = [np.inf, B_MAX] + ([np.inf] if offset else [])
        try:
            r = least_squares(resid, p0, bounds=(lb, ub), x_scale="jac", max_nfev=2000)
        except (ValueError, FloatingPointError):
            continue
        if not np.all(np.isfinite(r.x)):
            continue
        sse = float(np.sum(r.fun ** 2))
        if best is None or sse < best[1]:
            best = (r.x, sse)
    if best is None:
        return None
    p, sse = best
    a = float(p[0] * x0 ** p[1])  # back to original units: a u^-b = a x0^b x^-b
    return np.array([a, float(p[1]), float(p[2]) if offset else 0.0]), sse


def fit_power_law(x, y, *, offset: bool = True, n_boot: int = 500, level: float = 0.95, seed: int = 0) -> PowerLawFit:
    """Fit ``y = a x^-b (+ c)``; bootstrap ``n_boot`` refits for the intervals (pairs resampling)."""
    x, y = _check(x, y, offset)
    got = _fit_once(x, y, offset)
    if got is None:
        raise FitError("the power-law fit did not converge from any start")
    p, sse = got
    rng = np.random.default_rng(seed)
    need = 3 if offset else 2
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(len(x), size=len(x))
        if len(np.unique(x[idx])) < need:
            continue  # a resample that cannot pin the parameters down says nothing
        # refits start from the full-data exponent (and one grid start, against a far-off resample)
        r = _fit_once(x[idx], y[idx], offset, starts=(min(max(p[1], 1e-3), B_MAX), 0.5))
        if r is not None:
            boots.append(r[0])
    boot = np.array(boots).reshape(-1, 3)
    q = (1 - level) / 2
    ci = {}
    for i, k in enumerate("abc"):
        if len(boot):
            ci[k] = (float(np.quantile(boot[:, i], q)), float(np.quantile(boot[:, i], 1 - q)))
        else:
            ci[k] = (math.nan, math.nan)
    return PowerLawFit(a=float(p[0]), b=float(p[1]), c=float(p[2]), offset=offset, x=x, y=y,
                       rmse=math.sqrt(sse / len(x)), boot=boot, ci=ci, level=level)


def plot_fit(fit: PowerLawFit, path: str | Path, *, xlabel: str = "x", ylabel: str = "y", title: str | None = None,
             factor: float = 10.0) -> Path:
    """Log-log plot: points, the fit extended to ``factor`` x max(x), its bootstrap band, the extrapolation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    xs = np.geomspace(fit.x.min(), fit.x.max() * factor, 200)
    lo, hi = fit.predict_interval(xs)
    ext = fit.extrapolate(factor)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(fit.x, fit.y, color="k", zorder=3, label="runs")
    ax.plot(xs, fit.predict(xs), color="C0",
            label=f"fit: b = {fit.b:.3g} [{fit.ci['b'][0]:.3g}, {fit.ci['b'][1]:.3g}]")
    if np.isfinite(lo).all():
        ax.fill_between(xs, lo, hi, color="C0", alpha=0.2, label=f"{int(fit.level * 100)}% bootstrap band")
    ax.errorbar([ext["x"]], [ext["y"]], yerr=[[max(0.0, ext["y"] - ext["lo"])], [max(0.0, ext["hi"] - ext["y"])]],
                fmt="s", color="C3", capsize=4, label=f"extrapolated: {ext['y']:.3g} [{ext['lo']:.3g}, {ext['hi']:.3g}]")
    ax.set_xscale("log")
    if (fit.y > 0).all() and (fit.predict(xs) > 0).all():
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title or "")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path

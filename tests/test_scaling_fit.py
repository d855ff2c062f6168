"""Power-law fitter: recovers known exponents, honest intervals, clear errors on unusable data."""

from __future__ import annotations

import numpy as np
import pytest

from train.scaling_fit import FitError, fit_power_law, plot_fit


@pytest.mark.parametrize("a,b,c", [(5.0, 0.35, 0.1), (40.0, 0.7, 0.02), (-2.0, 0.25, 0.9)])
def test_recovers_exponent_within_5_percent(a, b, c):
    rng = np.random.default_rng(1)
    x = np.repeat(np.geomspace(1e3, 1e6, 7), 3)  # 7 sizes x 3 seeds
    clean = a * x ** -b + c
    y = clean * (1 + 0.005 * rng.standard_normal(len(x)))
    fit = fit_power_law(x, y, n_boot=100)
    assert abs(fit.b - b) / b < 0.05, fit
    lo, hi = fit.ci["b"]
    assert lo <= fit.b <= hi and hi - lo < 0.5 * b  # a real, not degenerate, interval around the estimate
    ext = fit.extrapolate()
    truth = a * ext["x"] ** -b + c
    assert ext["x"] == pytest.approx(1e7)
    assert ext["lo"] <= ext["y"] <= ext["hi"]
    assert abs(ext["y"] - truth) < 0.05 * abs(truth) + 1e-3


def test_units_of_x_do_not_matter():
    x = np.geomspace(10, 1e4, 6)
    y = 3 * x ** -0.5 + 0.2
    f1 = fit_power_law(x, y, n_boot=0)
    f2 = fit_power_law(x * 1e9, y, n_boot=0)  # FLOPs instead of scenes
    assert f1.b == pytest.approx(0.5, rel=1e-3) and f2.b == pytest.approx(0.5, rel=1e-3)
    assert f2.predict(x[2] * 1e9) == pytest.approx(y[2], rel=1e-4)


def test_without_offset_on_three_sizes():
    x = np.array([100.0, 1000, 10000, 100, 1000, 10000])
    y = 2 * x ** -0.3 * np.array([1.01, 0.99, 1.0, 0.99, 1.01, 1.0])
    fit = fit_power_law(x, y, offset=False, n_boot=100)
    assert fit.c == 0 and abs(fit.b - 0.3) < 0.015


def test_too_few_points_is_a_clear_error():
    with pytest.raises(FitError, match="too few points.*need at least 3 distinct x"):
        fit_power_law([100, 1000], [0.5, 0.4])
    with pytest.raises(FitError, match="too few points"):
        fit_power_law([100, 1000, 10000], [0.5, 0.4, 0.35])  # 3 points, 3 parameters: no dof
    with pytest.raises(FitError, match="finite"):
        fit_power_law([1, 2, 3, 4], [0.5, np.nan, 0.3, 0.2])
    with pytest.raises(FitError, match="> 0"):
        fit_power_law([0, 2, 3, 4], [0.5, 0.4, 0.3, 0.2])


def test_plot_written(tmp_path):
    x = np.geomspace(1e2, 1e4, 5)
    fit = fit_power_law(x, 1.5 * x ** -0.4 + 0.05, n_boot=50)
    out = plot_fit(fit, tmp_path / "fit.png", xlabel="scenes", ylabel="loss")
    assert out.is_file() and out.stat().st_size > 5000
    assert not list(tmp_path.glob(".*"))  # no temp file left behind

"""Mean, sample standard deviation and a t-based 95 % confidence interval over seeds, without scipy."""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

# two-sided 95 % (0.975 quantile) of Student's t for 1..30 degrees of freedom
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959964


def t_critical(dof: int) -> float:
    """The 0.975 quantile of Student's t with `dof` degrees of freedom (NaN for dof < 1)."""
    if dof < 1:
        return math.nan
    if dof <= len(_T975):
        return _T975[dof - 1]
    # Cornish-Fisher expansion around the normal quantile: within 1e-4 of the exact value beyond 30 dof
    z = _Z975
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def mean_std_ci(values: Iterable[float | None]) -> tuple[float, float, float, int]:
    """(mean, sample std, 95 % CI half-width, n) of the non-NaN values; std and CI are NaN when n < 2."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, 1
    std = float(x.std(ddof=1))
    return mean, std, t_critical(n - 1) * std / math.sqrt(n), n


def wilson(p: float, n: float, z: float = _Z975) -> tuple[float, float]:
    """The 95 % Wilson score interval (lo, hi) of an accuracy `p` measured on `n` test images; NaNs without n.

    Wilson, not p ± z·sqrt(p(1-p)/n): near 100 % accuracy the normal interval runs past 1 and shrinks to nothing."""
    if not n or n != n or p != p:
        return math.nan, math.nan
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)

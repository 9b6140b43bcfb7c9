"""How ``evaluate`` and the pointing scores report a figure."""
from __future__ import annotations

import math


def reported_score(value: float) -> float:
    """``value`` to 6 decimals, or to 6 significant digits when it is under 0.001 (a BLEU-4 of 4.5e-07 is not
    shown as 0.0, which would read as no match at all)."""
    value = float(value)
    if value == 0 or not math.isfinite(value) or abs(value) >= 1e-3:
        return round(value, 6)
    return float(f"{value:.6g}")

"""Repetitions: fold the results of one scenario's repetitions into medians with min–max spread.

Every numeric field of a scenario result becomes the median over the repetitions that succeeded,
and ``spread[field]`` holds its ``[min, max]``. Latency CDFs are folded point by point; idle
capacity levels level by level. Error counts add up instead (a median would hide a bad run).
"""

from __future__ import annotations

import statistics
from typing import Any

#: Fields that are counts of failures: summed over repetitions, never medianed.
SUMMED = {"errors"}


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _median(values: list[float]) -> float:
    m = statistics.median(values)
    return round(m, 4) if isinstance(m, float) else m


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians (and spread) of dicts that share one shape; non-numeric fields from the first."""
    first = results[0]
    out: dict[str, Any] = {}
    spread: dict[str, list[float]] = {}
    for key, v0 in first.items():
        values: list[Any] = [r.get(key) for r in results]
        if key in SUMMED and _numeric(values):
            out[key] = sum(values)
        elif key == "cdf" and all(isinstance(v, list) and len(v) == len(v0) for v in values):
            out[key] = [
                [point[0], _median([v[i][1] for v in values])] for i, point in enumerate(v0)
            ]
        elif key == "levels" and all(isinstance(v, list) and len(v) == len(v0) for v in values):
            out[key] = [merge([v[i] for v in values]) for i in range(len(v0))]
        elif values and _numeric(values):
            out[key] = _median(values)
            spread[key] = [min(values), max(values)]
        else:
            out[key] = v0
    if len(results) > 1:
        out["spread"] = spread
    return out


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One scenario's repetitions -> one result: medians of the successful ones."""
    ok = [r for r in runs if r.get("ok")]
    failed = [r.get("error", "unknown error") for r in runs if not r.get("ok")]
    if not ok:
        return {
            "ok": False,
            "error": failed[-1] if failed else "not run",
            "repetitions": 0,
            "failed_repetitions": len(failed),
        }
    out = merge(ok)
    out["repetitions"] = len(ok)
    out["failed_repetitions"] = len(failed)
    if failed:
        out["failures"] = failed
    return out


def strip(result: dict[str, Any]) -> dict[str, Any]:
    """A repetition as kept in results.json: without its CDF (the median CDF is kept)."""
    return {k: v for k, v in result.items() if k != "cdf"}

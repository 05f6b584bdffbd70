"""float32 <-> float16 casts, bit for bit what numpy's ``astype`` gives, through OpenCV where
OpenCV proves exact.

numpy converts half floats one element at a time (about 4 ns each here: 1.1 ms for a
512 x 512 radiograph, the largest single cost of a small radiograph's conversion); OpenCV
uses the CPU's conversion instructions (F16C), about 15 times faster. Both round to nearest,
ties to even, and keep signed zeros, subnormals and infinities; they differ only in the
payload bits of a NaN, so an array holding a NaN goes through numpy.

Which OpenCV function casts, and whether any does it right, depends on the OpenCV release:
5.x casts with ``cv2.add(a, -0.0, dtype=cv2.CV_16F)`` and has no ``cv2.convertFp16``; 4.x
(4.14 at least) fails that ``cv2.add`` with ``(-215:Assertion failed) func in function
'arithm_op'`` and casts with ``cv2.convertFp16`` (float16 stored as int16). So the first cast
of a process probes: each candidate casts a fixed set of values (a sweep of float32 bit
patterns, every finite float16, signed zeros, subnormals, overflow to infinity, rounding
ties) in several shapes, and the first whose every bit matches numpy's is used from then on;
when none matches (or OpenCV is missing) every cast is numpy's. :func:`backend` names the
choice. Arrays of fewer than :data:`TINY` elements always go through numpy (OpenCV 5.1 reads
a (1, 1) array as a scalar and returns four values), and an array that OpenCV refuses or
returns in another size is cast by numpy: a cast never fails where numpy's would not.
``tests/test_halfcast.py`` compares both paths with numpy.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: arrays with fewer elements are cast by numpy (no gain from OpenCV, and its scalar rules)
TINY = 16


@dataclass(frozen=True, slots=True)
class _Casts:
    """One OpenCV way to cast contiguous 2-D arrays: float32 -> float16 and back."""

    name: str  # "opencv 5.1.0 (add)"
    to16: Callable[[np.ndarray], np.ndarray]
    to32: Callable[[np.ndarray], np.ndarray]
    error: type[Exception]  # cv2.error


def _as_2d(a: np.ndarray) -> np.ndarray:
    """A contiguous 2-D view (OpenCV's matrix) of a contiguous array of 1 to N dimensions."""
    if a.ndim == 2:
        return a
    return a.reshape(-1, a.shape[-1]) if a.ndim > 2 else a.reshape(1, -1)


def _candidates() -> list[_Casts]:
    """The OpenCV casts this OpenCV offers, in order of preference (none without OpenCV)."""
    try:
        import cv2  # here: hiroml.config imports this module's users, and the CLI stays quick
    except ImportError:
        return []
    version = cv2.__version__
    out = [
        _Casts(
            f"opencv {version} (add)",
            # x + (-0.0) is x for every x, signed zeros included; rounded to float16 once
            lambda a: cv2.add(a, -0.0, dtype=cv2.CV_16F),
            lambda h: cv2.add(h, -0.0, dtype=cv2.CV_32F),
            cv2.error,
        )
    ]
    convert = getattr(cv2, "convertFp16", None)  # OpenCV 4.x: float16 held as int16
    if convert is not None:
        out.append(
            _Casts(
                f"opencv {version} (convertFp16)",
                lambda a: convert(a).view(np.float16),
                lambda h: convert(h.view(np.int16)),
                cv2.error,
            )
        )
    return out


def _run(fn: Callable[[np.ndarray], np.ndarray], a: np.ndarray) -> np.ndarray:
    """``fn`` on the 2-D view of ``a``, reshaped back (raises whatever ``fn`` raises)."""
    return fn(_as_2d(np.ascontiguousarray(a))).reshape(a.shape)


def _probe_values() -> tuple[np.ndarray, np.ndarray]:
    """The float32 and float16 values (no NaN) a cast must get right, as flat arrays: float32
    bit patterns of every exponent and both signs, a denser sweep of the float16 range (2^-25
    to 2^16), the ties halfway between consecutive float16 values, and every float16."""
    wide = np.arange(0, 1 << 32, 1048573, dtype=np.uint64).astype(np.uint32).view(np.float32)
    dense = np.arange(0x33000000, 0x47800000, 65539, dtype=np.uint32).view(np.float32)
    f16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    up = np.sort(f16[np.isfinite(f16) & ~np.signbit(f16)]).astype(np.float64)
    ties = ((up[:-1] + up[1:]) / 2)[::16].astype(np.float32)  # exact: 12 significant bits
    e = 2.0**-24  # the smallest float16 subnormal
    special = [0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, -65520.0, 1e-8, -1e-8]
    special += [e, e / 2, -e / 2, 3 * e / 2, 1023 * e, 2.0**-14, 1 + 2.0**-11, 1 + 3 * 2.0**-11]
    f32 = np.concatenate([wide, dense, -dense, ties, -ties, np.array(special, np.float32)])
    return f32[~np.isnan(f32)], f16[~np.isnan(f16)]


def _exact(casts: _Casts) -> bool:
    """Whether ``casts`` gives numpy's bits on the probe values in every probed shape."""
    f32, f16 = _probe_values()
    with np.errstate(over="ignore"):
        want16 = f32.astype(np.float16)
    want32 = f16.astype(np.float32)
    m = TINY * (len(f32) // TINY)
    k = TINY * (len(f16) // TINY)
    cases: list[tuple[Callable[[np.ndarray], np.ndarray], np.ndarray, np.ndarray]] = [
        (casts.to16, f32, want16),
        (casts.to16, f32[:m].reshape(TINY, -1), want16[:m].reshape(TINY, -1)),
        (casts.to16, f32[:m].reshape(-1, TINY, 1), want16[:m].reshape(-1, TINY, 1)),
        (casts.to16, f32[:TINY].reshape(TINY, 1), want16[:TINY].reshape(TINY, 1)),
        (casts.to16, f32[-TINY:], want16[-TINY:]),
        (casts.to32, f16, want32),
        (casts.to32, f16[:k].reshape(-1, TINY), want32[:k].reshape(-1, TINY)),
        (casts.to32, f16[:TINY].reshape(TINY, 1), want32[:TINY].reshape(TINY, 1)),
    ]
    try:
        for fn, x, want in cases:
            got = _run(fn, x)
            if got.dtype != want.dtype or got.tobytes() != want.tobytes():
                log.info(
                    "%s: not numpy's bits for shape %s; casts go through numpy", casts.name, x.shape
                )
                return False
    except (casts.error, ValueError) as e:
        log.info("%s fails (%s); casts go through numpy", casts.name, e)
        return False
    return True


@functools.cache
def _chosen() -> _Casts | None:
    """The first exact OpenCV cast, or None (numpy); probed once per process."""
    return next((c for c in _candidates() if _exact(c)), None)


def backend() -> str:
    """The path of the casts in this process: ``"opencv 5.1.0 (add)"``,
    ``"opencv 4.14.0 (convertFp16)"`` or ``"numpy"``."""
    casts = _chosen()
    return casts.name if casts is not None else "numpy"


def _cast(
    a: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], casts: _Casts, dtype: type[np.floating]
) -> np.ndarray | None:
    """``fn`` on ``a`` (at least :data:`TINY` elements), or None where OpenCV refuses it or
    returns something else than an array of ``a``'s size in ``dtype``."""
    try:
        out = fn(_as_2d(np.ascontiguousarray(a)))
    except casts.error:
        return None
    if out.dtype != dtype or out.size != a.size:
        return None
    return out.reshape(a.shape)


def to_float16(a: np.ndarray) -> np.ndarray:
    """``a.astype(np.float16)``, faster for float32 arrays."""
    a = np.asarray(a)
    if a.dtype != np.float32 or a.size < TINY or np.isnan(a).any():
        return a.astype(np.float16)
    casts = _chosen()
    out = None if casts is None else _cast(a, casts.to16, casts, np.float16)
    return a.astype(np.float16) if out is None else out


def to_float32(a: np.ndarray, *, nan_payloads: bool = True) -> np.ndarray:
    """``a.astype(np.float32)`` (a new array), faster for float16 arrays. ``nan_payloads=False``
    skips the check that gives NaNs numpy's payload bits, for a caller that replaces NaNs."""
    a = np.asarray(a)
    if a.dtype != np.float16 or a.size < TINY:
        return a.astype(np.float32)
    casts = _chosen()
    out = None if casts is None else _cast(a, casts.to32, casts, np.float32)
    if out is None or (nan_payloads and np.isnan(out).any()):  # NaN payloads as numpy's
        return a.astype(np.float32)
    return out

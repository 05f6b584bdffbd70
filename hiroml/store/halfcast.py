"""float32 <-> float16 casts through OpenCV, bit for bit what numpy's ``astype`` gives.

numpy converts half floats one element at a time (about 4 ns each here: 1.1 ms for a
512 x 512 radiograph, the largest single cost of a small radiograph's conversion); OpenCV
uses the CPU's conversion instructions (F16C), about 15 times faster. Both round to nearest,
ties to even, and keep signed zeros, subnormals and infinities; they differ only in the
payload bits of a NaN, so an array holding a NaN goes through numpy
(``tests/test_halfcast.py`` compares every float16 value and a sweep of float32 bit patterns).
"""

from __future__ import annotations

import numpy as np


def _as_2d(a: np.ndarray) -> np.ndarray:
    """A contiguous 2-D view (OpenCV's matrix) of a contiguous array of 1 to N dimensions."""
    if a.ndim == 2:
        return a
    return a.reshape(-1, a.shape[-1]) if a.ndim > 2 else a.reshape(1, -1)


def to_float16(a: np.ndarray) -> np.ndarray:
    """``a.astype(np.float16)``, faster for float32 arrays."""
    a = np.asarray(a)
    if a.dtype != np.float32 or a.size == 0 or a.ndim == 0 or np.isnan(a).any():
        return a.astype(np.float16)
    import cv2  # here: hiroml.config imports this module's users, and the CLI stays quick

    src = np.ascontiguousarray(a)
    # x + (-0.0) is x for every x, signed zeros included; the sum is rounded to float16 once.
    return cv2.add(_as_2d(src), -0.0, dtype=cv2.CV_16F).reshape(a.shape)


def to_float32(a: np.ndarray, *, nan_payloads: bool = True) -> np.ndarray:
    """``a.astype(np.float32)`` (a new array), faster for float16 arrays. ``nan_payloads=False``
    skips the check that gives NaNs numpy's payload bits, for a caller that replaces NaNs."""
    a = np.asarray(a)
    if a.dtype != np.float16 or a.size == 0 or a.ndim == 0:
        return a.astype(np.float32)
    import cv2

    src = np.ascontiguousarray(a)
    out = cv2.add(_as_2d(src), -0.0, dtype=cv2.CV_32F).reshape(a.shape)
    if nan_payloads and np.isnan(out).any():  # NaN payloads as numpy keeps them
        return a.astype(np.float32)
    return out

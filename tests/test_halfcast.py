"""hiroml.store.halfcast: the OpenCV casts give numpy's bits, for every float16 value and a sweep
of float32 bit patterns (signed zeros, subnormals, overflow to infinity, ties)."""

from __future__ import annotations

import numpy as np
import pytest

from hiroml.store import halfcast


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_every_float16_to_float32_as_numpy() -> None:
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    assert np.isnan(h).any()  # NaN payloads included: that array takes numpy's path
    assert _bits_equal(halfcast.to_float32(h), h.astype(np.float32))
    finite = h[np.isfinite(h)].reshape(1, -1)
    assert _bits_equal(halfcast.to_float32(finite), finite.astype(np.float32))


def test_float32_sweep_to_float16_as_numpy() -> None:
    # every 9973rd bit pattern: all exponents, both signs, the float16 overflow and
    # subnormal ranges, and ties of the rounding
    x = np.arange(0, 1 << 32, 9973, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = x[~np.isnan(x)]
    special = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e-8, -1e-8, 2.0**-25], np.float32)
    x = np.concatenate([x, special])
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    assert _bits_equal(halfcast.to_float16(x), want)
    assert np.signbit(halfcast.to_float16(np.float32([-0.0])))[0]


@pytest.mark.parametrize("shape", [(7,), (5, 3), (2, 3, 4), (512, 512)])
def test_shapes_and_views(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    x = rng.random(shape, dtype=np.float32)
    assert _bits_equal(halfcast.to_float16(x), x.astype(np.float16))
    if x.ndim == 2:  # a strided view is made contiguous first
        v = x[::2, ::-1]
        assert _bits_equal(halfcast.to_float16(v), v.astype(np.float16))


def test_nan_and_other_dtypes_take_numpy() -> None:
    x = np.array([[0.5, np.nan]], np.float32)
    assert _bits_equal(halfcast.to_float16(x), x.astype(np.float16))
    u = np.arange(6, dtype=np.uint16).reshape(2, 3)
    assert _bits_equal(halfcast.to_float16(u), u.astype(np.float16))
    assert _bits_equal(halfcast.to_float32(u), u.astype(np.float32))
    assert halfcast.to_float16(np.zeros((0, 3), np.float32)).dtype == np.float16

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


def _edge_values(n: int) -> np.ndarray:
    """``n`` float32 values cycling through signed zeros, subnormals, ties and infinities."""
    e = 2.0**-24
    v = [-0.0, 0.0, e / 2, -3 * e / 2, 1 + 2.0**-11, 65520.0, -np.inf, 0.1, 1e-8, 2.0**-14]
    return np.resize(np.array(v, np.float32), n)


@pytest.mark.parametrize(
    "shape",
    [
        (),
        (1,),
        (2,),
        (3,),
        (4,),
        (1, 1),
        (4, 1),
        (1, 4),
        (2, 2),
        (16,),
        (16, 1),
        (1, 16),
        (17, 1),
        (2, 1, 3),
        (3, 4, 5),
        (2, 2, 2, 3),
    ],
)
def test_every_shape_small_ones_included(shape: tuple[int, ...]) -> None:
    x = _edge_values(int(np.prod(shape))).reshape(shape)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
        got = halfcast.to_float16(x)
    assert _bits_equal(got, want)
    assert _bits_equal(halfcast.to_float32(want), want.astype(np.float32))


@pytest.fixture
def fresh_probe():
    """The backend probed again in the test, and again after it."""
    halfcast._chosen.cache_clear()
    yield
    halfcast._chosen.cache_clear()


def test_backend_is_opencv_here_and_probed_once(fresh_probe: None) -> None:
    import cv2

    assert halfcast.backend() in (
        f"opencv {cv2.__version__} (add)",
        f"opencv {cv2.__version__} (convertFp16)",
    )
    assert halfcast._chosen.cache_info().misses == 1
    halfcast.to_float16(np.zeros(64, np.float32))
    assert halfcast._chosen.cache_info().misses == 1


def _fails(*args: object, **kwargs: object) -> np.ndarray:
    import cv2

    raise cv2.error("OpenCV(4.14.0) arithm.cpp:750: error: (-215:Assertion failed) func")


def _sweep() -> np.ndarray:
    x = np.arange(0, 1 << 32, 65537, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([x[~np.isnan(x)], _edge_values(10)]).reshape(-1, 2)


def test_an_opencv_whose_cast_raises_falls_back_to_numpy(
    fresh_probe: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    monkeypatch.setattr(cv2, "add", _fails)  # as cv2.add(..., dtype=cv2.CV_16F) in 4.14
    monkeypatch.delattr(cv2, "convertFp16", raising=False)
    assert halfcast.backend() == "numpy"
    x = _sweep()
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
        assert _bits_equal(halfcast.to_float16(x), want)
    assert _bits_equal(halfcast.to_float32(want), want.astype(np.float32))


def test_opencv_4_casts_with_convert_fp16(
    fresh_probe: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    def convert_fp16(a: np.ndarray) -> np.ndarray:  # OpenCV 4's: float16 held as int16
        if a.dtype == np.float32:
            with np.errstate(over="ignore"):
                return a.astype(np.float16).view(np.int16)
        return a.view(np.float16).astype(np.float32)

    monkeypatch.setattr(cv2, "add", _fails)
    monkeypatch.setattr(cv2, "convertFp16", convert_fp16, raising=False)
    assert halfcast.backend() == f"opencv {cv2.__version__} (convertFp16)"
    x = _sweep()
    with np.errstate(over="ignore"):
        assert _bits_equal(halfcast.to_float16(x), x.astype(np.float16))


def test_an_opencv_cast_with_other_bits_is_not_used(
    fresh_probe: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    add = cv2.add

    def flushes_subnormals(a: np.ndarray, b: float, *, dtype: int) -> np.ndarray:
        out = add(a, b, dtype=dtype)
        out[np.abs(out) < 2.0**-14] = 0  # one value off is enough to refuse the path
        return out

    monkeypatch.setattr(cv2, "add", flushes_subnormals)
    monkeypatch.delattr(cv2, "convertFp16", raising=False)
    assert halfcast.backend() == "numpy"
    x = np.full((8, 8), 2.0**-20, np.float32)
    assert _bits_equal(halfcast.to_float16(x), x.astype(np.float16))


def test_a_cast_opencv_refuses_after_the_probe_is_numpy_s(
    fresh_probe: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    assert halfcast.backend().startswith("opencv")
    monkeypatch.setattr(cv2, "add", _fails)
    monkeypatch.setattr(cv2, "convertFp16", _fails, raising=False)
    x = _sweep()
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
        assert _bits_equal(halfcast.to_float16(x), want)
    assert _bits_equal(halfcast.to_float32(want), want.astype(np.float32))

"""HiromlDataset's per-sample cast: numpy on the calling thread, bit for bit what torch's
``.to(dtype)`` (and ``.mul_(scale)``) give, and no torch compute op in ``__getitem__``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hiroml import HiromlDataset
from hiroml.data.dataset import to_image

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _bits(t: torch.Tensor) -> bytes:
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32).numpy().tobytes()


def _torch_way(a: np.ndarray, dtype: torch.dtype, scale: float | None) -> torch.Tensor:
    t = torch.from_numpy(a.copy())
    if scale is None:
        return t.to(dtype)
    return t.to(torch.float32).mul_(scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_casts_are_bit_identical_to_torch(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(0)
    every_half = np.arange(1 << 16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    cases: list[tuple[np.ndarray, float | None]] = [
        (every_half, None),  # every float16, NaNs (signalling ones too) and infinities included
        (rng.integers(0, 65536, (300, 200)).astype(np.uint16), 1 / 65535),
        (rng.integers(0, 256, (300, 200)).astype(np.uint8), 1 / 255),
        (rng.integers(-32768, 32768, (5, 40, 60)).astype(np.int16), None),  # CT, HU
    ]
    for a, scale in cases:
        got = to_image(a, dtype, scale=scale)
        want = _torch_way(a, dtype, scale)
        assert got.dtype == dtype and got.shape == a.shape
        assert _bits(got) == _bits(want), (a.dtype, dtype)
        assert not np.shares_memory(
            got.numpy() if dtype != torch.bfloat16 else got.view(torch.int16).numpy(), a
        )


class _Ops(TorchDispatchMode):
    """Records every aten op dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


# views and from_numpy (lift_fresh): no arithmetic, no thread pool
VIEWS = {"aten.unsqueeze", "aten.view", "aten.alias", "aten.detach", "aten.lift_fresh"}


@pytest.mark.parametrize(
    ("modality", "dtype"),
    [("cxr", torch.float32), ("cxr", torch.bfloat16), ("ct", torch.float32), ("ct", torch.float16)],
)
def test_getitem_runs_no_torch_compute(
    tiny_build_clinical: Path, modality: str, dtype: torch.dtype
) -> None:
    """The cast cannot use torch's intra-op threads: no torch op but views runs in
    ``__getitem__``, and the images are those torch's cast gives."""
    ds = HiromlDataset(tiny_build_clinical, split=None, modality=modality, dtype=dtype, label="icu")
    assert len(ds) > 0
    for i in range(len(ds)):
        with _Ops() as mode:
            sample = ds[i]
        assert set(mode.ops) <= VIEWS, mode.ops
        want = torch.from_numpy(ds.read_array(i)).to(torch.float32)
        if modality == "cxr" and ds.read_array(i).dtype.kind in "ui":
            want = want.mul_(ds.scales[i])
        assert _bits(sample["image"][0]) == _bits(want.to(dtype))

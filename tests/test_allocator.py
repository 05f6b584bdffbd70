"""hiroml.pipeline.allocator: glibc keeps freed buffers during a build; HIROML_MALLOC=default opts out."""

from __future__ import annotations

import subprocess
import sys

import pytest

_CHECK = """
import ctypes, ctypes.util, sys, time
from hiroml.pipeline import allocator
set_ = allocator.keep_freed_buffers()
# a freed buffer of 8 MB is reused: allocating it again after free touches no new pages
import numpy as np
a = np.ones(8 * 1024 * 1024 // 8); addr = a.ctypes.data; del a
b = np.empty(8 * 1024 * 1024 // 8)
print(set_, b.ctypes.data == addr)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_buffers_are_reused_unless_opted_out() -> None:
    out = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"], out.stdout + out.stderr
    env = {"HIROML_MALLOC": "default", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", _CHECK], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split()[0] == "False"

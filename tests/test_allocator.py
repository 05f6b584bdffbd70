"""hiroml.pipeline.allocator: glibc keeps freed buffers during a build; runtime.malloc=default
(HIROML_MALLOC=default) opts out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MakeCfg

from hiroml.errors import ConfigError
from hiroml.pipeline import allocator

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


_TRIM = """
from hiroml.pipeline import allocator
import numpy as np
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
allocator.keep_freed_buffers()
bufs = [np.ones(1024 * 1024 // 8) for _ in range(64)]  # 64 MB from the heap
keep = np.ones(1024)  # allocated last: the heap's top stays in use
before = rss(); del bufs
kept = rss()
print(allocator.release_freed(), before - kept < 8 * 1024, kept - rss() > 48 * 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim: Linux only")
def test_freed_heap_pages_go_back_when_released() -> None:
    """Freed buffers stay resident (kept for reuse) until :func:`release_freed` hands the
    heap's free pages back."""
    out = subprocess.run([sys.executable, "-c", _TRIM], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True"], out.stdout + out.stderr


def test_the_environment_sets_the_runtime_switches_through_the_config(
    make_cfg: MakeCfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_cfg(tmp_path, tmp_path / "out")
    assert (cfg.runtime.malloc, cfg.runtime.fault) == ("keep_freed", None)
    monkeypatch.setenv("HIROML_MALLOC", "default")
    monkeypatch.setenv("HIROML_FAULT", "during_prune:2")
    cfg = make_cfg(tmp_path, tmp_path / "out")
    assert (cfg.runtime.malloc, cfg.runtime.fault) == ("default", "during_prune:2")
    monkeypatch.setenv("HIROML_FAULT", "nowhere")
    with pytest.raises(ConfigError, match=r"runtime\.fault='nowhere'"):
        make_cfg(tmp_path, tmp_path / "out")


_ARROW = """
from hiroml.pipeline import allocator
import numpy as np, pyarrow as pa
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
allocator.keep_freed_buffers()
arrays = [pa.array(np.arange(i, i + 1024 * 1024 // 8)) for i in range(48)]  # 48 MB, Arrow's pool
heap = [np.ones(1024 * 1024 // 8) for _ in range(32)]  # 32 MB from the heap
keep = np.ones(1024)  # allocated last: the heap's top stays in use
del arrays, heap
kept = rss()
print(allocator.release_all(), kept - rss() > 64 * 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim: Linux only")
def test_release_all_hands_back_the_heap_and_arrows_pool() -> None:
    """:func:`release_all` hands back the heap's free pages and what pyarrow's pool kept."""
    out = subprocess.run([sys.executable, "-c", _ARROW], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"], out.stdout + out.stderr


_POOL = """
import sys
if sys.argv[1] == "loaded":
    import pyarrow
from hiroml.pipeline import allocator
set_ = allocator.keep_freed_buffers()
import pyarrow as pa
print(set_, pa.default_memory_pool().backend_name)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
@pytest.mark.parametrize(
    ("when", "preset", "want"),
    [("later", None, "system"), ("loaded", None, "system"), ("later", "mimalloc", "mimalloc")],
)
def test_arrow_allocates_from_the_same_heap_unless_the_user_chose_a_pool(
    when: str, preset: str | None, want: str
) -> None:
    """keep_freed_buffers makes pyarrow's system pool (glibc's heap) the default, whether
    pyarrow is loaded yet or not; a pool named in ARROW_DEFAULT_MEMORY_POOL stays."""
    env = {k: v for k, v in os.environ.items() if k != allocator.ARROW_POOL_VARIABLE}
    if preset is not None:
        env[allocator.ARROW_POOL_VARIABLE] = preset
    out = subprocess.run(
        [sys.executable, "-c", _POOL, when], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["True", want], out.stdout + out.stderr

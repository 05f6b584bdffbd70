"""The self-check of the numeric paths (hiroml.doctor, hiroml-doctor) and its refusal at the
start of hiroml-build."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MakeCfg

from hiroml import errors as cli_errors
from hiroml.cli import build as cli
from hiroml.cli import doctor as cli_doctor
from hiroml.doctor import cache as doctor_cache
from hiroml.doctor import checks as doctor_checks
from hiroml.doctor import libraries as doctor_libraries
from hiroml.errors import SelfCheckError
from hiroml.ingest.discover import discover
from hiroml.pipeline import unchanged
from hiroml.store import halfcast


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    """No check result carried from one test to the next (``checked`` caches per process)."""
    doctor_checks.checked.cache_clear()
    yield
    doctor_checks.checked.cache_clear()


def _wrong_float16(a: np.ndarray) -> np.ndarray:
    """A cast that rounds toward zero where numpy rounds to nearest: plausible, and wrong."""
    out = np.asarray(a).astype(np.float16)
    return np.nextafter(out, np.float16(0)).astype(np.float16)


def _failing_float16(a: np.ndarray) -> np.ndarray:
    raise RuntimeError(
        "OpenCV(4.14.0) arithm.cpp:750: error: (-215:Assertion failed) func\n in 'arithm_op'"
    )


def test_every_check_passes_here_and_has_a_golden_value() -> None:
    report = doctor_checks.run()
    assert report.ok, "\n".join(report.lines())
    names = [c.name for c in report.checks]
    assert sorted(names) == sorted(doctor_checks.GOLDEN), (
        "a check without a golden value, or the reverse"
    )
    assert {"float16 cast", "CT_small.dcm: resampled", "MR_small_RLE.dcm: data_hash"} <= set(names)
    decoders = {doctor_checks.GOLDEN[n].split()[0] for n in names if n.endswith(": decode")}
    # every decode path of a radiograph: numpy, imagecodecs' codecs, pylibjpeg-rle, pydicom, Pillow
    assert decoders == {
        "numpy", "pylibjpeg-rle", "openjpeg", "libjpeg-turbo", "charls", "pydicom", "pillow-openjpeg",
    }  # fmt: skip
    assert report.lines()[-1].startswith(f"all {len(names)} checks pass")
    assert report.seconds < 5.0


def test_the_lossless_references_decode_to_the_same_values() -> None:
    """Four syntaxes of MR_small.dcm hold the same pixels: one stored-value hash."""
    same = {
        doctor_checks.GOLDEN[f"{n}: decode"].split()[1]
        for n in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                  "MR_small_jpeg_ls_lossless.dcm")
    }  # fmt: skip
    assert len(same) == 1


def test_the_environment_comes_from_the_package_metadata() -> None:
    env = doctor_libraries.environment()
    assert env["numpy"] == np.__version__
    assert env["pydicom"] == importlib.metadata.version("pydicom")
    assert env["python"] == ".".join(str(v) for v in sys.version_info[:3])
    assert set(env) == {"python", "hiroml", *(name for name, _ in doctor_libraries.LIBRARIES)}
    assert all(v for v in env.values())
    assert doctor_libraries.tested_range("opencv").startswith("opencv-python-headless >=")
    assert doctor_libraries.tested_range("SimpleITK").startswith("SimpleITK >=")


def test_a_wrong_float16_cast_is_a_mismatch_naming_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(halfcast, "to_float16", _wrong_float16)
    report = doctor_checks.run()
    assert not report.ok
    bad = {c.name: c for c in report.failed}
    assert bad["float16 cast"].status == doctor_checks.MISMATCH
    assert "differ from numpy's astype" in bad["float16 cast"].value
    assert "MR_small.dcm: data_hash" in bad  # the stored radiographs move with it
    assert "MR_small.dcm: decode" not in bad and "CT_small.dcm: HU volume" not in bad
    opencv = doctor_libraries.environment()["opencv"]
    message = bad["float16 cast"].message(report.environment)
    assert message.startswith(f"OpenCV {opencv}: the float16 cast gives other values")
    assert f"hiroml is tested with {doctor_libraries.tested_range('opencv')}" in message
    problem = report.problem()
    assert "\n" not in problem and f"OpenCV {opencv}: the float16 cast" in problem
    assert "doctor.enabled=false" in problem
    assert "refuses to build" in report.lines()[-1]


def test_a_failing_cast_is_reported_with_its_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(halfcast, "to_float16", _failing_float16)
    report = doctor_checks.run()
    check = next(c for c in report.checks if c.name == "float16 cast")
    assert check.status == doctor_checks.FAILED
    message = check.message(report.environment)
    assert "the float16 cast fails (RuntimeError: OpenCV(4.14.0) arithm.cpp:750" in message
    assert "func in 'arithm_op')" in message  # one line
    with pytest.raises(SelfCheckError, match=r"OpenCV .*: the float16 cast fails"):
        doctor_checks.require()


def test_hiroml_doctor_exits_0_when_all_pass_and_2_otherwise(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        cli_doctor.main([])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "environment:" in out and f"numpy               {np.__version__}" in out
    assert "ok        JPEG2000.dcm: data_hash" in out
    monkeypatch.setattr(halfcast, "to_float16", _wrong_float16)
    with pytest.raises(SystemExit) as done:
        cli_doctor.main([])
    assert done.value.code == 2
    out = capsys.readouterr().out
    assert "MISMATCH  float16 cast: OpenCV" in out


@pytest.fixture()
def _root_logging() -> Iterator[None]:
    """Hydra configures the root logger (console and run-log handlers) when the CLI runs in
    this process: put it back as it was for the tests that follow."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("_root_logging")
def test_hiroml_build_refuses_before_writing_anything(
    tiny_datamart: tuple[Path, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(halfcast, "to_float16", _failing_float16)
    out = tmp_path / "out"
    argv = [
        "hiroml-build",
        f"paths.datamart={tiny_datamart[0]}",
        f"paths.output={out}",
        "progress=false",
        "executor.workers=1",
        "doctor.cache=false",  # a pass recorded by an earlier build would be trusted
        f"hydra.run.dir={tmp_path / 'runs'}",  # Hydra's own run log, kept apart here
    ]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(cli, "_composed", [])  # the CLI's per-process state, kept to this test
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == cli_errors.EXIT_CONFIG == 2
    assert not out.exists(), "the refused build wrote into the output folder"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("hiroml-build: ")]
    assert line.startswith("hiroml-build: the self-check of the numeric paths failed: OpenCV ")
    assert "the float16 cast fails" in line


def _no_run() -> doctor_checks.Report:
    raise AssertionError("the self-check ran although its pass was recorded")


def test_a_pass_is_recorded_per_environment_and_trusted_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    key = doctor_cache.fingerprint(doctor_checks.GOLDEN)
    assert not doctor_cache.recorded(key)
    assert len(doctor_checks.require(cache=True).checks) == len(doctor_checks.GOLDEN)
    assert (tmp_path / "cache" / "hiroml" / "selfcheck" / key).is_file()
    doctor_checks.checked.cache_clear()
    monkeypatch.setattr(doctor_checks, "run", _no_run)
    assert doctor_checks.require(cache=True).checks == ()  # trusted: nothing ran
    with pytest.raises(AssertionError, match="ran although"):
        doctor_checks.require()  # without the cache it runs
    upgraded = {**doctor_libraries.environment(), "numpy": "0.0.1"}
    monkeypatch.setattr(doctor_cache, "environment", lambda: upgraded)
    assert doctor_cache.fingerprint(doctor_checks.GOLDEN) != key
    with pytest.raises(AssertionError, match="ran although"):
        doctor_checks.require(cache=True)  # another environment: it runs again


def test_a_failing_self_check_is_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(halfcast, "to_float16", _wrong_float16)
    with pytest.raises(SelfCheckError, match="float16 cast"):
        doctor_checks.require(cache=True)
    assert not (tmp_path / "cache" / "hiroml" / "selfcheck").exists()


def test_doctor_enabled_is_a_config_key(
    tiny_datamart: tuple[Path, Any], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    assert make_cfg(tiny_datamart[0], tmp_path / "o").doctor.enabled is True
    assert (
        make_cfg(tiny_datamart[0], tmp_path / "o", "doctor.enabled=false").doctor.enabled is False
    )


def test_a_new_environment_is_not_an_unchanged_build(
    tiny_datamart: tuple[Path, Any],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The skip record's fingerprint holds the environment: a re-run after an upgrade builds
    (and so runs the self-check); doctor.enabled alone changes nothing."""
    root = tiny_datamart[0]
    found = discover(root)
    cfg = make_cfg(root, tmp_path / "o")
    before = unchanged.fingerprint(cfg, root, found)
    off = make_cfg(root, tmp_path / "o", "doctor.enabled=false")
    assert unchanged.fingerprint(off, root, found) == before
    upgraded = {**doctor_libraries.environment(), "numpy": "0.0.1"}
    monkeypatch.setattr(unchanged, "environment", lambda: upgraded)
    assert unchanged.fingerprint(cfg, root, found) != before


def test_the_environment_record_counts_decoders_and_the_diff_names_changes() -> None:
    record = doctor_libraries.environment_record(
        ["numpy", "openjpeg", "numpy, openjpeg", "", "numpy"]
    )
    assert record["versions"] == doctor_libraries.environment()
    assert record["decoders"] == {"not recorded": 1, "numpy": 3, "openjpeg": 2}
    rows = doctor_libraries.environment_rows(record)
    assert ["numpy", np.__version__] in rows
    assert ["decoders (samples)", "not recorded (1), numpy (3), openjpeg (2)"] in rows
    assert doctor_libraries.environment_rows(None) == []
    assert doctor_libraries.environment_changes(record, record) == ["environment: unchanged"]
    older = {**record, "versions": {**record["versions"], "numpy": "2.2.6", "imagecodecs": "-"}}
    assert doctor_libraries.environment_changes(older, record) == [
        f"environment: numpy 2.2.6 -> {np.__version__}",
        f"environment: imagecodecs - -> {record['versions']['imagecodecs']}",
    ]
    assert doctor_libraries.environment_changes(None, record) == ["environment: not recorded in A"]
    assert doctor_libraries.environment_changes(None, None) == [
        "environment: not recorded in A and B"
    ]


def test_a_fallback_decoder_with_the_same_values_is_no_mismatch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The decode checks compare stored values: the decoder's name is recorded, not hashed."""
    name = "MR_small_RLE.dcm: decode"
    golden = dict(doctor_checks.GOLDEN)
    golden[name] = "pydicom " + golden[name].split()[1]
    monkeypatch.setattr(doctor_checks, "GOLDEN", golden)
    assert doctor_checks.run().ok
    golden[name] = "pylibjpeg-rle 0123456789abcdef0123456789abcdef"
    bad = [c for c in doctor_checks.run().failed]
    assert [c.name for c in bad] == [name]
    assert bad[0].message(doctor_libraries.environment()).startswith("pylibjpeg-rle ")


def test_an_area_resize_that_sums_in_another_order_is_a_mismatch_naming_opencv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An OpenCV whose INTER_AREA differs by one float32 rounding on a detector-sized image
    (as summation orders do between SIMD paths) is caught, though float16 may hide it."""
    import cv2

    real = cv2.resize

    def one_ulp_off(src: np.ndarray, dsize: Any, *args: Any, **kw: Any) -> np.ndarray:
        out = real(src, dsize, *args, **kw)
        if out.dtype == np.float32 and out.size > 100_000:
            out.flat[::997] = np.nextafter(out.flat[::997], np.float32(2.0))
        return out

    monkeypatch.setattr(cv2, "resize", one_ulp_off)
    report = doctor_checks.run()
    bad = {c.name for c in report.failed}
    assert "resize 3000x2500" in bad and "resize 2140x1760" in bad
    assert "float16 cast" not in bad and "CT_small.dcm: HU volume" not in bad
    assert "OpenCV" in report.problem()


def test_the_radiograph_intensity_step_is_ieee_float32_arithmetic() -> None:
    """The window/rescale step gives numpy's float32 subtract-multiply-clip exactly, for
    every integer and float input (no library whose SIMD paths round otherwise)."""
    from hiroml.cxr import pixels as cxr_pixels

    rng = np.random.default_rng(3)
    for dtype in (np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64):
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
        if info is not None:
            a = rng.integers(max(info.min, -5000), min(info.max, 70000), (777, 913)).astype(dtype)
        else:
            a = (rng.standard_normal((777, 913)) * 1000.0).astype(dtype)
        lo, hi = -123.25, 3900.5
        want = np.clip(
            (a.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo)), 0.0, 1.0
        ) if dtype is not np.float64 else np.clip(
            np.subtract(a, np.float32(lo), dtype=np.float32) * np.float32(1.0 / (hi - lo)), 0, 1
        )  # fmt: skip
        got = cxr_pixels._affine01(a, lo, hi)
        assert got.dtype == np.float32
        assert np.array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32)), dtype


def test_the_environment_is_read_from_the_metadata_once_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doctor_libraries._versions.cache_clear()
    reads: list[str] = []
    version = importlib.metadata.version

    def counted(dist: str) -> str:
        reads.append(dist)
        return version(dist)

    monkeypatch.setattr(importlib.metadata, "version", counted)
    first = doctor_libraries.environment()
    n = len(reads)
    assert n >= len(doctor_libraries.LIBRARIES)
    first["numpy"] = "changed by a caller"
    second = doctor_libraries.environment()
    assert len(reads) == n  # not read again
    assert second["numpy"] == version("numpy")  # each call gets its own dict
    doctor_libraries._versions.cache_clear()

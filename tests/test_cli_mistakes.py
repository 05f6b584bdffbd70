"""A user's mistakes at the console: each gets one ``hiroml-...: ...`` line, an exit code, no
traceback, and nothing is written or lost."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hiroml import __version__
from hiroml.cli import build as cli_build
from hiroml.cli import export as cli_export
from hiroml.cli import verify as cli_verify
from hiroml.cli import versions as cli_versions
from hiroml.cli.common import console
from hiroml.versions.listing import list_versions

REPO = Path(__file__).resolve().parents[1]


def _run_build(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    """``hiroml-build ARGV`` in this process; its exit code."""
    monkeypatch.setattr(sys, "argv", ["hiroml-build", *argv])
    monkeypatch.setattr(cli_build, "_composed", [])
    monkeypatch.setattr(cli_build, "_output", [])
    with pytest.raises(SystemExit) as done:
        cli_build.main()
    return int(done.value.code or 0)


def _one_line(text: str) -> str:
    assert "Traceback" not in text
    lines = [x for x in text.splitlines() if x.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("+cxr.sise=[256,256]", "hiroml-build: unknown key cxr.sise; did you mean cxr.size?"),
        ("cxr.sise=[256,256]", "hiroml-build: unknown key cxr.sise; did you mean cxr.size?"),
        ("+foo=1", "hiroml-build: unknown key foo; see hiroml-build --cfg job for the keys"),
        ("++ct.fill_hus=-1000", "hiroml-build: unknown key ct.fill_hus; did you mean ct.fill_hu?"),
    ],
)
def test_an_unknown_key_is_refused_with_the_nearest_one(
    override: str,
    line: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    code = _run_build(monkeypatch, f"paths.output={out}", "paths.datamart=/nowhere", override)
    err = capsys.readouterr()
    assert code == 2
    assert _one_line(err.err) == line and err.out == ""
    assert not out.exists()  # not even Hydra's run folder


def test_known_keys_and_group_choices_pass_the_key_check() -> None:
    assert (
        cli_build.unknown_key(
            [
                "cxr.size=[256,256]",
                "+ct.fill_hu=-1000",
                "executor=dask",
                "experiment=covid_cxr",
                "hydra.job.chdir=false",
                "-cn",
                "build",
                "--cfg",
                "job",
            ]
        )
        is None
    )


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_an_output_that_cannot_be_written_gets_one_line(
    kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if kind == "file":
        blocker = tmp_path / "README.md"
        blocker.write_text("a file\n")
        out, reason = blocker, "a part of it is a file, not a folder"
    else:  # root ignores chmod: the file system refuses as a read-only mount does
        out, reason = tmp_path / "ro" / "out", "it is on a read-only file system"
        real = Path.mkdir

        def mkdir(self: Path, *a: Any, **k: Any) -> None:
            if str(self).startswith(str(out)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            real(self, *a, **k)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    before = _files(tmp_path)
    code = _run_build(monkeypatch, f"paths.output={out}", "paths.datamart=/nowhere")
    err = capsys.readouterr().err
    assert code == 2
    assert _one_line(err) == (
        f"hiroml-build: cannot write in {out}: {reason}; "
        "give paths.output= a folder you can write to"
    )
    assert _files(tmp_path) == before


def test_a_build_error_is_printed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _run_build(
        monkeypatch,
        f"paths.output={tmp_path / 'out'}",
        f"paths.datamart={tmp_path / 'nowhere'}",
        "doctor.enabled=false",
    )
    err = capsys.readouterr().err
    assert code == 2
    assert _one_line(err).startswith("hiroml-build: datamart folder ")


def test_a_missing_group_choice_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run_build(monkeypatch, "executor=nope") == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("hiroml-build: In 'build': Could not find 'executor/nope'")


def test_version_and_help(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run_build(monkeypatch, "--version") == 0
    assert capsys.readouterr().out == f"hiroml-build (hiroml) {__version__}\n"
    assert _run_build(monkeypatch, "--help") == 0
    text = capsys.readouterr().out
    assert text.startswith("hiroml-build: zipped DICOM exams")
    assert text.index("Examples:") < text.index("powered by Hydra")
    for prog, main in [
        ("hiroml-verify", cli_verify.main),
        ("hiroml-export", cli_export.main),
        ("hiroml-versions", cli_versions.main),
    ]:
        with pytest.raises(SystemExit) as done:
            main(["--version"])
        assert done.value.code == 0
        assert capsys.readouterr().out == f"{prog} (hiroml) {__version__}\n"


def test_version_v_is_the_deprecated_spelling_of_dataset_version(
    tiny_build_clinical: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = list_versions(tiny_build_clinical)[-1].name
    assert cli_verify.main([str(tiny_build_clinical), "--dataset-version", name, "--quick"]) == 0
    new = capsys.readouterr()
    assert cli_verify.main([str(tiny_build_clinical), "--version", name, "--quick"]) == 0
    old = capsys.readouterr()
    assert old.out == new.out and f"version {name}: sound" in new.out
    assert (
        _one_line(old.err)
        == f"hiroml-verify: --version V is deprecated, use --dataset-version {name}"
    )


def test_a_manifest_path_means_its_output_folder(
    tiny_build_clinical: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hiroml.data.dataset import HiromlDataset

    out = tiny_build_clinical
    manifest = out / "manifest.parquet"
    assert len(HiromlDataset(manifest, split=None)) == len(HiromlDataset(out, split=None)) > 0
    assert cli_verify.main([str(manifest), "--quick"]) == 0
    assert f"{out} version {list_versions(out)[-1].name}: sound" in capsys.readouterr().out
    assert cli_versions.main([str(manifest)]) == 0
    assert list_versions(out)[-1].name in capsys.readouterr().out
    v = list_versions(out)[-1]
    assert HiromlDataset(v.path / "manifest.parquet", split=None).version == v.name


def test_pin_and_export_into_a_read_only_place_get_one_line(
    tiny_build_clinical: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tiny_build_clinical
    before = {p: p.stat().st_mtime_ns for p in _files(out)}

    def refuse(*a: Any, **k: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    with monkeypatch.context() as m:
        m.setattr(os, "open", refuse)
        m.setattr(Path, "mkdir", refuse)
        m.setattr(Path, "write_text", refuse)
        m.setattr(Path, "write_bytes", refuse)
        code = cli_versions.main([str(out), "--pin", "1", "--wait", "0"])
    assert code == 2
    assert _one_line(capsys.readouterr().err) == (
        f"hiroml-versions: cannot write in {out}: it is on a read-only file system; "
        "--pin, --unpin and --prune change the output: run them where it can be written"
    )
    assert {p: p.stat().st_mtime_ns for p in _files(out)} == before
    dest = tmp_path / "ro" / "dest"
    with monkeypatch.context() as m:
        m.setattr(Path, "mkdir", refuse)
        code = cli_export.main([str(out), str(dest), "--format", "png"])
    assert code == 2
    assert _one_line(capsys.readouterr().err) == (
        f"hiroml-export: cannot write in {dest}: it is on a read-only file system; "
        "give DEST a folder you can write to"
    )
    assert not dest.exists()


def test_a_closed_pipe_is_quiet(tiny_build_clinical: Path, tmp_path: Path) -> None:
    script = "import sys; from hiroml.cli.versions import cli; cli()"
    for args in ["", "--json"] * 2:  # the reader may go before or after the first write
        done = subprocess.run(
            f'set -o pipefail; "{sys.executable}" -c "{script}" "{tiny_build_clinical}" {args}'
            " | head -c 1",
            shell=True,
            capture_output=True,
            text=True,
            timeout=60,
            executable="/bin/bash",
            env={**os.environ, "PYTHONUNBUFFERED": "0"},
        )
        assert done.stderr == "" and done.stdout == ("[" if args else "v")
        assert done.returncode == 0
    entry = console("hiroml-x", lambda argv: (_ for _ in ()).throw(BrokenPipeError()))
    # stdout a file of its own: the handler points its descriptor at /dev/null, and must not
    # take pytest's capture descriptor with it
    with (
        open(tmp_path / "stdout", "w") as out,
        contextlib.redirect_stdout(out),
        pytest.raises(SystemExit) as ended,
    ):
        entry()
    assert ended.value.code == 0


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found |= {int(x) for x in text.split()}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_build_stops_at_once_with_one_line(
    sig: signal.Signals,
    code: int,
    tiny_datamart: tuple[Path, dict[str, Any]],
    tiny_build_clinical: Path,
    tmp_path: Path,
) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(tiny_build_clinical, out)  # a published version that must stay intact
    latest = list_versions(out)[-1]
    root, _ = tiny_datamart
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hiroml",
            f"paths.datamart={root}",
            f"paths.output={out}",
            "executor.workers=2",
            "progress=true",
            "cxr.size=[128,128]",
            "doctor.enabled=false",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    seen, t0 = b"", time.monotonic()
    while b"convert" not in seen and proc.poll() is None and time.monotonic() - t0 < 120:
        seen += proc.stderr.read() or b""
        time.sleep(0.05)
    assert b"convert" in seen, seen
    workers = _children(proc.pid)
    proc.send_signal(sig)
    t1 = time.monotonic()
    os.set_blocking(proc.stderr.fileno(), True)
    stdout, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - t1 < 4.0
    assert proc.returncode == code
    text = (seen + stderr).decode()
    assert "Traceback" not in text and stdout == b""
    assert text.rstrip().endswith(
        f"hiroml-build: interrupted; version {latest.name} is intact; run again to resume"
    )
    assert text.count("hiroml-build:") == 1
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)
    assert list_versions(out)[-1].name == latest.name
    assert cli_verify.main([str(out), "--quick"]) == 0


def _slow(n: int) -> int:
    time.sleep(0.5)
    return n


def test_closing_the_pool_stops_its_workers_without_draining_the_queue() -> None:
    from hiroml.config import ExecutorConfig
    from hiroml.pipeline.executor import map_items

    gen = map_items(
        _slow, list(range(40)), ExecutorConfig(workers=2), desc="x", unit="n", progress=False
    )
    next(gen)
    workers = _children(os.getpid())
    t0 = time.monotonic()
    gen.close()  # what an interrupt does to the loop that consumes it
    assert time.monotonic() - t0 < 3.0  # the queue holds 10 s of work for two workers
    assert workers and not any(_alive(p) for p in workers)

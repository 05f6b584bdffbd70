"""A new week on datamarts of growing size: what the week costs, beside what it brings.

Builds datamarts of 1,000 and 6,000 (and, with ``--full``, 30,000) already-built
single-image zips (256 x 256 uncompressed CR, :mod:`bench_cxr`'s seeded radiographs with a
texture of their own, :func:`image`, so that no two are near duplicates; one patient per zip, 1,000 zips per weekly batch folder), then adds the same week of 300 new
zips to each and prints, side by side:

- ``first ms/zip``: the first build of the base datamart, per zip (``hiroml-build``, 1 worker,
  ``cxr.size=[256,256]``, a new process, start-up to report);
- ``week ms/zip``: the build once the week's batch folder has arrived, per new zip;
- ``decode ms/zip``: a zip read + ``pydicom.dcmread(...).pixel_array`` loop over the same new
  zips (the peer: what the week brings);
- ``first MB`` and ``week MB``: the driver's peak resident memory (``ru_maxrss`` of the build
  process itself, which with 1 worker also runs the conversion) in each build;

Times are CPU seconds (user + system) of the process doing the work, which with one
worker is the whole build: on a machine shared with others the wall clock also counts the
time spent waiting for a core (each build's wall time is printed as it ends). Beside them
the growth from the smallest base to each larger one, and a projection to 100,000 and
1,000,000 samples from the growth between the two largest bases measured (a straight line
through them: cost per new zip and driver peak).

The zips are generated on the fly under a temporary folder (``--keep DIR`` keeps and reuses
them), never committed. Goals: the week on 6,000 <= 1.25x the week on 1,000; the driver
peak of the first build on 6,000 <= 1.25x that on 1,000, under 2 GB projected at 100,000.

    python benchmarks/bench_scale.py            # bases 1,000 and 6,000, a week of 300
    python benchmarks/bench_scale.py --quick    # bases 200 and 1,200, a week of 60 (smoke run)
    python benchmarks/bench_scale.py --full     # also a base of 30,000
    python benchmarks/bench_scale.py --first 2000  # only the first build of 2,000 zips
    python benchmarks/bench_scale.py --repeat 3 --instructions  # and instructions counted
    python benchmarks/bench_scale.py --steps    # instructions counted per step of the build

``--first N`` prints the first build's fixed cost per zip alone: one build of N zips (CPU
ms per zip) beside the decode loop over the same zips, and their ratio (goal: <= 2x).

``--build-with CHECKOUT`` runs the builds on another checkout's hiroml (``git archive <commit>
| tar -x -C /tmp/old``) for a before/after on the same zips (``--keep``).

``--repeat N`` builds each week N times, each on a fresh copy of the first build's output,
and keeps the least CPU (and that build's peak): on a shared machine one build's CPU time
varies by 10-20%, as much as the growth goal's margin. The weeks are built in rounds, one
per base in turn (the first builds of every base come first), so that a slow spell of the
machine slows the bases of a round alike, not one base's builds. With ``--first`` it builds the N
zips that many times, each into a new output folder and each after a decode loop over the
same zips, and keeps the least CPU of each.

``--instructions`` then builds each week once more under valgrind's callgrind and prints
the instructions each executes, and their growth: a count that no other load on the machine
moves (the week's growth in CPU seconds read 1.18-1.36x over three runs here), for a
before/after of a change smaller than that spread. It needs ``valgrind`` (Debian: ``apt-get
install valgrind``) and takes about 50 times a build's CPU (4-5 minutes a week here).

``--steps`` counts them per step of the build as well (``--instructions`` implied): the
functions of ``benchmarks/week_markers.py``, each counted apart from the steps it calls,
with each step's growth from the smallest base, where what grows with the dataset lies.

``--compile`` runs the builds on hiroml as an installed package is: the bytecode of the
hiroml they import (``--build-with``'s, or this environment's) is compiled first
(:mod:`compileall`, as pip does when it installs a package), into its ``__pycache__``. Where
``PYTHONDONTWRITEBYTECODE`` is set (this machine) an editable checkout's modules are
otherwise compiled again in every build: about 0.16 s of CPU here, 0.08 ms per zip at 2,000.
The bytecode stays: later builds of that checkout, benchmark or not, import it (a before/after
must compile both sides or neither).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_build_xr import _patient, build_with, decode_loop
from bench_cxr import SYNTAXES, dicom_bytes, radiograph

PER_BATCH = 1000  # zips per weekly batch folder of a base datamart
SIZE = 256  # rows = columns of every image, and cxr.size: the bytes stored match those decoded
_RUSAGE_HOOK = (
    "import atexit, os, resource\n"
    "def _usage():\n"
    "    r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "    c = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "    cpu = r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime\n"
    "    with open(os.environ['HIROML_BENCH_RUSAGE'], 'w') as f:\n"
    "        f.write(f'{r.ru_maxrss} {cpu}')\n"
    "atexit.register(_usage)\n"
    "from hiroml.cli.build import main\n"
    "main()\n"
)


def image(seed: int) -> np.ndarray:
    """:func:`bench_cxr.radiograph` with a texture of its own: seeded 16 x 16 blocks
    (+-150 of 4,095), which the near-duplicate signature's high-pass keeps. Without it
    every image would be a near duplicate of every other (one patient group, 100 listed
    near duplicates per sample), which no datamart is."""
    rng = np.random.default_rng(10_000_019 + seed)
    blocks = np.kron(rng.normal(0, 150, (16, 16)), np.ones((SIZE // 16, SIZE // 16)))
    return np.clip(radiograph(seed, SIZE, SIZE) + blocks, 0, 4095).astype(np.uint16)


def _zip(path: Path, seed: int, pid: int, when: dt.datetime) -> None:
    data = dicom_bytes(image(seed), SYNTAXES["explicit-le"])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        z.writestr("1/1.dcm", _patient(data, pid, when))


def batch_folders(root: Path, n: int, *, start: dt.datetime, first: int, per: int) -> list[Path]:
    """``n`` single-image zips in weekly COMPLETE batch folders of ``per`` zips under ``root``,
    patients ``first``, ``first + 1``, ...; folders already complete are reused."""
    folders = []
    for b in range(-(-n // per)):
        day = start + dt.timedelta(weeks=b)
        folder = root / f"CXR-UPDATE-{day:%Y%m%d}-COMPLETE"
        count = min(per, n - b * per)
        if not (folder.is_dir() and len(list(folder.glob("*.zip"))) == count):
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                i = first + b * per + j
                when = day - dt.timedelta(days=3, minutes=j)
                _zip(folder / f"{i}_{when:%Y%m%d-%H%M%S}_A{i:07d}_XR-CHEST-PA.zip", i, i, when)
        folders.append(folder)
    return folders


@dataclass
class Build:
    wall: float
    seconds: float  # CPU seconds of the build process and its children (user + system)
    peak_mb: float
    line: str


def build(datamart: Path, out: Path) -> Build:
    """``hiroml-build`` (1 worker, ``cxr.size=[256,256]``) as a new process: its wall and
    CPU seconds, its own peak resident memory (MB) and its "written:" line."""
    usage = out.parent / f"{out.name}.rusage"
    cmd = [sys.executable, "-c", _RUSAGE_HOOK, *_build_args(datamart, out)]
    env = {**os.environ, "HIROML_BENCH_RUSAGE": str(usage)}
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent, env=env)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"build of {datamart} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    lines = [x.strip() for x in (done.stdout + done.stderr).splitlines() if "written:" in x]
    rss, cpu = usage.read_text().split()
    return Build(wall, float(cpu), int(rss) / 1024, lines[-1] if lines else "")


def _build_args(datamart: Path, out: Path) -> list[str]:
    """The overrides every measured build runs with: 1 worker, ``cxr.size`` the input's."""
    return [
        f"paths.datamart={datamart}", f"paths.output={out}", "executor.workers=1",
        f"cxr.size=[{SIZE},{SIZE}]", "progress=false",
    ]  # fmt: skip


def fresh_copy(src: Path, dst: Path) -> None:
    """``src`` copied to ``dst`` (replacing what ``dst`` holds), then written to disk
    (``os.sync``) before anything is measured. A real week is built on an output written
    days before, whose pages the kernel has long written back; a copy made a moment before
    leaves them dirty (800 MB for the base of 6,000, 140 MB for 1,000), and a build's own
    writes may then wait while the kernel flushes them, in system CPU that grows with the
    base. The flush takes that question out of the measurement (docs/scale.md: "The week,
    step by step")."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)
    os.sync()


def compile_hiroml() -> None:
    """Compile the bytecode of the hiroml the builds import (``--build-with``'s, or this
    environment's), as an installation does; it goes into the package's ``__pycache__``."""
    where = subprocess.run(  # run from here, where no hiroml lies: ``-c`` puts the cwd first
        [sys.executable, "-c", "import hiroml, os; print(os.path.dirname(hiroml.__file__))"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent,
    ).stdout.strip()  # fmt: skip
    subprocess.run([sys.executable, "-m", "compileall", "-q", where], check=True)
    print(f"hiroml's bytecode compiled under {where}", flush=True)


def record_self_check() -> None:
    """Run the built hiroml's self-check once and record its pass (``hiroml.doctor.cache``),
    so that no measured build runs it. Otherwise, after an edit of hiroml or on a new
    checkout, the first build runs it: about 0.8 s of CPU and a higher driver peak."""
    code = "from hiroml.doctor.checks import require; require(cache=True)"
    here = Path(__file__).resolve().parent  # where no hiroml lies: ``-c`` puts the cwd first
    subprocess.run([sys.executable, "-c", code], check=True, cwd=here)


def decode_cpu(zips: list[Path]) -> float:
    """CPU seconds of :func:`bench_build_xr.decode_loop` over ``zips`` (the best of two)."""
    best = float("inf")
    for _ in range(2):
        t = time.process_time()
        decode_loop(zips)
        best = min(best, time.process_time() - t)
    return best


@dataclass
class Row:
    base: int
    first: Build
    week: Build
    decode: float  # CPU seconds of the decode loop over the week's zips
    base_decode: float  # CPU seconds of the decode loop over the base's zips


@dataclass
class Base:
    """A base datamart, its first build, and where that build's output lies."""

    n: int
    folders: list[Path]
    datamart: Path
    out: Path
    first: Build
    copy: Path | None  # a copy of the first build's output, to build each week on afresh


def first_build(
    work: Path, folders: list[Path], week: Path, n: int, repeat: int, *, copy: bool = False
) -> Base:
    """The first build of the base ``folders``; then ``week`` joins the datamart."""
    dm = work / f"datamart-{n}"
    dm.mkdir()
    for folder in folders:
        (dm / folder.name).symlink_to(folder.resolve())
    out = work / f"out-{n}"
    first = build(dm, out)
    print(f"  base {n}: {first.wall:.1f} s ({first.seconds:.1f} s CPU), {first.line}", flush=True)
    (dm / week.name).symlink_to(week.resolve())
    kept = work / f"first-{n}" if repeat > 1 or copy else None
    if kept is not None:
        fresh_copy(out, kept)  # which writes the build's pages back too
    else:
        os.sync()  # its pages written back, as a week later (see fresh_copy)
    return Base(n, folders, dm, out, first, kept)


def measure(bases: list[Base], week: Path, n_week: int, repeat: int = 1) -> list[Row]:
    """The build with ``week`` added to each base, ``repeat`` rounds of every base in turn
    (a slow spell of the machine slows the bases of one round alike), each on a fresh copy
    of the base's first build output; the least CPU of each base, beside the decode loops."""
    weeks: dict[int, list[tuple[Build, str]]] = {b.n: [] for b in bases}
    for k in range(repeat):
        for b in bases:
            if k and b.copy is not None:
                fresh_copy(b.copy, b.out)
            done = build(b.datamart, b.out)
            weeks[b.n].append((done, _timings(b.out)))
            print(f"  base {b.n} + week {n_week}: {done.wall:.1f} s ({done.seconds:.2f} s CPU)")
    zips = sorted(week.glob("*.zip"))
    decode_loop(zips[:1])
    decode = decode_cpu(zips)
    rows = []
    for b in bases:
        least, stages = min(weeks[b.n], key=lambda w: w[0].seconds)
        print(f"  base {b.n} + week {n_week}, the least CPU of {repeat}: {least.seconds:.2f} s")
        print(f"    its stages (wall s, build.json timings): {stages}")
        base_decode = decode_cpu(sorted(z for f in b.folders for z in f.glob("*.zip")))
        print(f"  decode: week {decode:.2f} s, base {base_decode:.1f} s CPU", flush=True)
        rows.append(Row(b.n, b.first, least, decode, base_decode))
    return rows


def _valgrind() -> str:
    """The path of ``valgrind``; SystemExit saying how to install it where it is missing."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    return valgrind


def instructions(datamart: Path, out: Path) -> int:
    """The instructions ``hiroml-build`` (as :func:`build` runs it) executes on ``datamart``
    into ``out``, counted by valgrind's callgrind (its ``Collected`` line)."""
    valgrind = _valgrind()
    cmd = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    cmd += [sys.executable, "-m", "hiroml", *_build_args(datamart, out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"counted build of {datamart} failed:\n{done.stderr[-3000:]}")
    return int(found.group(1))


def instructions_by_step(datamart: Path, out: Path) -> Counter[str]:
    """:func:`instructions`, per step of the build (``benchmarks/week_markers.py``: the
    innermost step running), from one build under callgrind with a dump at each marker."""
    from week_markers import instructions_by_step as by_step

    valgrind = _valgrind()
    with tempfile.TemporaryDirectory(prefix="hiroml-steps-") as tmp:
        dumps, marks = Path(tmp) / "callgrind.out", Path(tmp) / "marks.json"
        cmd = [valgrind, "--tool=callgrind", "--dump-before=*getppid*"]
        cmd += [f"--callgrind-out-file={dumps}", sys.executable]
        cmd += [str(Path(__file__).with_name("week_markers.py")), *_build_args(datamart, out)]
        env = {**os.environ, "HIROML_MARKS": str(marks)}
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent, env=env)
        if done.returncode != 0 or not marks.is_file():
            raise SystemExit(f"counted build of {datamart} failed:\n{done.stderr[-3000:]}")
        return by_step(dumps, marks)


def count_weeks(bases: list[Base], n_week: int, *, steps: bool = False) -> None:
    """Each base's week built once more under callgrind, on a fresh copy of its first build's
    output: the instructions of each, and their growth from the smallest base; with
    ``steps``, also per step of the build, largest growth first."""
    counts, by_step = [], []
    for b in bases:
        assert b.copy is not None  # first_build keeps one when instructions are counted
        fresh_copy(b.copy, b.out)
        if steps:
            by_step.append(instructions_by_step(b.datamart, b.out))
            counts.append(sum(by_step[-1].values()))
        else:
            counts.append(instructions(b.datamart, b.out))
        print(f"  base {b.n} + week {n_week}: {counts[-1] / 1e9:.2f} G instructions", flush=True)
    for b, n in zip(bases[1:], counts[1:], strict=True):
        print(f"instructions growth {bases[0].n} -> {b.n}: week x{n / counts[0]:.3f}")
    if steps:
        step_table([b.n for b in bases], by_step)


def step_table(ns: list[int], by_step: list[Counter[str]]) -> None:
    """Millions of instructions per step and base, and each step's growth from the smallest
    base to the largest, largest growth first."""
    names = sorted(set().union(*by_step), key=lambda k: by_step[0][k] - by_step[-1][k])
    print(f"{'step (innermost)':40}" + "".join(f"{n:>10,}" for n in ns) + f"{'grows':>10}")
    for name in names:
        cells = "".join(f"{c[name] / 1e6:10.0f}" for c in by_step)
        print(f"{name:40}{cells}{(by_step[-1][name] - by_step[0][name]) / 1e6:+10.0f}")


def _timings(out: Path) -> str:
    """The stage timings the latest version's ``build.json`` records."""
    infos = sorted((out / "versions").glob("*/build.json"))
    if not infos:
        return "(no version)"
    timings = json.loads(infos[-1].read_text()).get("timings", {})
    return ", ".join(f"{k} {v}" for k, v in timings.items())


def table(rows: list[Row], n_week: int) -> None:
    """The side-by-side table, growth against the smallest base, and the projection."""
    head = f"{'base':>8}{'first ms/zip':>14}{'first/decode':>14}{'week ms/zip':>13}"
    head += f"{'decode ms/zip':>15}{'week/decode':>13}{'first MB':>10}{'week MB':>9}"
    print(head)
    for r in rows:
        print(
            f"{r.base:8d}{1000 * r.first.seconds / r.base:14.2f}"
            f"{r.first.seconds / r.base_decode:14.2f}{1000 * r.week.seconds / n_week:13.2f}"
            f"{1000 * r.decode / n_week:15.2f}{r.week.seconds / r.decode:13.2f}"
            f"{r.first.peak_mb:10.0f}{r.week.peak_mb:9.0f}"
        )
    lo = rows[0]
    for r in rows[1:]:
        print(
            f"growth {lo.base} -> {r.base}: week x{r.week.seconds / lo.week.seconds:.2f}, "
            f"decode x{r.decode / lo.decode:.2f}, first-build peak "
            f"x{r.first.peak_mb / lo.first.peak_mb:.2f}, week peak "
            f"x{r.week.peak_mb / lo.week.peak_mb:.2f}"
        )
    a, b = rows[-2], rows[-1]
    for n in (100_000, 1_000_000):
        week_ms = _line(a.base, b.base, a.week.seconds, b.week.seconds, n) * 1000 / n_week
        peak = _line(a.base, b.base, a.first.peak_mb, b.first.peak_mb, n)
        print(
            f"projected at {n:,} samples (line through {a.base:,} and {b.base:,}): a week of "
            f"{n_week} zips {week_ms:.1f} ms/zip ({week_ms * n_week / 1000:.0f} s), first-build "
            f"driver peak {peak:,.0f} MB"
        )


def _line(x0: float, x1: float, y0: float, y1: float, x: float) -> float:
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def first_only(zips: Path, work: Path, n: int, repeat: int = 1) -> None:
    """The first build of ``n`` zips beside the decode loop over them, and the ratio:
    ``repeat`` builds, each into a new output folder, each after a decode loop, keeping the
    least CPU of each."""
    start = dt.datetime(2020, 1, 4)
    folders = batch_folders(zips / "base", n, start=start, first=100_000, per=PER_BATCH)
    dm = work / f"datamart-{n}"
    dm.mkdir()
    for folder in folders:
        (dm / folder.name).symlink_to(folder.resolve())
    paths = sorted(z for f in folders for z in f.glob("*.zip"))
    decode_loop(paths[:1])
    builds, decodes = [], []
    for k in range(repeat):  # interleaved: a slow spell of the machine slows both
        decodes.append(decode_cpu(paths))
        out = work / f"out-{n}-{k}"
        builds.append(build(dm, out))
        shutil.rmtree(out)
        print(
            f"  {builds[-1].line} ({builds[-1].wall:.1f} s wall, {builds[-1].seconds:.2f} s CPU;"
            f" decode loop {decodes[-1]:.2f} s CPU)"
        )
    first, decode = min(builds, key=lambda b: b.seconds), min(decodes)
    print(f"{'zips':>6}{'first ms/zip':>14}{'decode ms/zip':>15}{'first/decode':>14}{'MB':>6}")
    print(
        f"{n:6d}{1000 * first.seconds / n:14.2f}{1000 * decode / n:15.2f}"
        f"{first.seconds / decode:14.2f}{first.peak_mb:6.0f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="bases 200 and 1,200, a week of 60")
    ap.add_argument("--full", action="store_true", help="also a base of 30,000")
    ap.add_argument("--keep", type=Path, help="generate the zips here and reuse them")
    ap.add_argument(
        "--build-with", type=Path, help="run the builds on this checkout's hiroml (a before)"
    )
    ap.add_argument("--first", type=int, metavar="N", help="only the first build of N zips")
    ap.add_argument(
        "--compile", action="store_true", help="compile the built hiroml's bytecode first"
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="build each week (or --first) N times: least CPU"
    )
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="then count each week's instructions under valgrind's callgrind",
    )
    ap.add_argument(
        "--steps",
        action="store_true",
        help="--instructions, per step of the build as well (benchmarks/week_markers.py)",
    )
    args = ap.parse_args()
    args.instructions = args.instructions or args.steps
    if args.build_with:
        build_with(args.build_with.resolve())
    if args.compile:
        compile_hiroml()
    record_self_check()
    if args.first:
        with tempfile.TemporaryDirectory(prefix="hiroml-first-") as tmp:
            first_only(args.keep or Path(tmp) / "zips", Path(tmp), args.first, args.repeat)
        return
    bases = [200, 1200] if args.quick else [1000, 6000] + ([30_000] if args.full else [])
    n_week = 60 if args.quick else 300
    per = 200 if args.quick else PER_BATCH
    with tempfile.TemporaryDirectory(prefix="hiroml-scale-") as tmp:
        zips = args.keep or Path(tmp) / "zips"
        t = time.perf_counter()
        start = dt.datetime(2020, 1, 4)
        folders = batch_folders(zips / "base", max(bases), start=start, first=100_000, per=per)
        week_day = start + dt.timedelta(weeks=len(folders) + 1)
        (week,) = batch_folders(zips / "week", n_week, start=week_day, first=10_000_000, per=n_week)
        print(f"zips ready under {zips} in {time.perf_counter() - t:.0f} s", flush=True)
        firsts = []
        for n in bases:
            work = Path(tmp) / f"work-{n}"
            work.mkdir()
            base = first_build(
                work, folders[: n // per], week, n, args.repeat, copy=args.instructions
            )
            firsts.append(base)
        table(measure(firsts, week, n_week, args.repeat), n_week)
        if args.instructions:
            count_weeks(firsts, n_week, steps=args.steps)


if __name__ == "__main__":
    main()

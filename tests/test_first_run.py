"""A new user's first ``hiroml-build`` in a clone: the demo datamart is announced (where, what)
with progress from the start, its time is a stage of the summary, the clone stays clean
(``git status``), and the console, ``report.html``, ``flow.svg`` and ``DATASET.md`` show one
set of counts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def first_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``hiroml-build`` with no datamart (the tiny demo, one worker) inside a fresh git
    repository that carries the project's ``.gitignore``."""
    clone = tmp_path_factory.mktemp("clone")
    shutil.copy(REPO / ".gitignore", clone / ".gitignore")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(clone)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", ".gitignore"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "clone"], check=True)
    p = subprocess.run(
        [str(BIN / "hiroml-build"), "demo_size=tiny", "executor.workers=1"],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    return clone, p


def test_the_demo_datamart_is_announced_timed_and_ignored(
    first_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    clone, p = first_run
    first = p.stdout.splitlines()[0]
    assert (
        "generating the tiny synthetic datamart" in first and "hiroml-out-demo-datamart/" in first
    )
    assert "not real data" in first
    assert "demo datamart" in p.stderr  # its progress bar
    stages = next(line for line in p.stdout.splitlines() if "time per stage" in line)
    assert re.search(r"demo datamart \d+\.\d+s, discover", stages), stages
    build = json.loads(next((clone / "hiroml-out" / "versions").glob("*/build.json")).read_text())
    assert "demo datamart" in build["timings"]
    status = subprocess.run(
        ["git", "-C", str(clone), "status", "--porcelain", "--ignored=no"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout == "", status.stdout
    assert sorted(p.name for p in clone.iterdir()) == [
        ".git",
        ".gitignore",
        "hiroml-out",
        "hiroml-out-demo-datamart",
    ]


def _console_counts(stdout: str) -> dict[str, int]:
    text = " ".join(stdout.split())
    pats = {
        "zips_found": r"zips found (\d+):",
        "zips_skipped": r"skipped (\d+) \(upload in progress\)",
        "zips_error": r"nothing usable (\d+) \(errors\)",
        "zips_duplicate": r"duplicates (\d+),",
        "zips_merged": r"merged (\d+) \(parts of a CT exam\)",
        "exams": r"; exams (\d+)",
        "dropped": r"inside exams: dropped (\d+)",
        "errors_in_exams": r", errors (\d+) \(audit rows\)",
        "exams_without_sample": r"exams with no sample (\d+)",
        "samples": r"samples (\d+):",
        "cxr": r"(\d+) radiographs,",
        "ct": r"(\d+) CT volumes, of",
        "patients": r"of (\d+) patients",
        **{
            f"{s}_patients": rf"patients per split:.*?\b{s} (\d+)" for s in ("train", "val", "test")
        },
    }
    return {k: int(re.search(p, text).group(1)) for k, p in pats.items()}  # type: ignore[union-attr]


def _svg_counts(svg: str) -> dict[str, int]:
    words = [w.strip() for w in re.sub(r"<[^>]*>", "\n", svg).splitlines() if w.strip()]
    text = " | ".join(words)
    pats = {
        "zips_found": r"Zips found \| (\d+) exam zips",
        "zips_skipped": r"Skipped: upload in progress \| (\d+) zip",
        "zips_error": r"Excluded: errors \| (\d+) zips? with nothing usable",
        "zips_duplicate": r"duplicates: (\d+) zip",
        "zips_merged": r"merged into a split CT exam: (\d+) zip",
        "exams": r"Exams \| (\d+) exams?",
        "errors_in_exams": r"\| errors: (\d+)",
        "exams_without_sample": r"exams with no sample: (\d+)",
        "samples": r"Samples \| (\d+) samples? of",
        "patients": r"samples? of (\d+) patients?",
        "cxr": r"(\d+) radiographs?, ",
        "ct": r"radiographs?, (\d+) CT volumes?",
        **{f"{s}_patients": rf"\| {s} \| (\d+) patients?" for s in ("train", "val", "test")},
    }
    out = {k: int(re.search(p, text).group(1)) for k, p in pats.items()}  # type: ignore[union-attr]
    dropped = re.search(r"Excluded inside exams \(audit rows\) \| (.*?)\| errors:", text)
    assert dropped is not None, text
    out["dropped"] = sum(int(n) for n in re.findall(r": (\d+)", dropped.group(1)))
    return out


def _card_counts(card: str) -> dict[str, int]:
    rows = dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", card, flags=re.MULTILINE))
    n = {k: int(re.match(r"\d+", v).group()) for k, v in rows.items() if re.match(r"\d+", v)}  # type: ignore[union-attr]
    samples = re.match(r"\d+ \((\d+) radiographs, (\d+) CT volumes\)", rows["samples"])
    assert samples is not None
    return {
        "zips_found": n["exam zips found"],
        "zips_skipped": n["skipped: upload in progress (IN-PROGRESS batch)"],
        "zips_error": n["excluded: zips with nothing usable (errors)"],
        "zips_duplicate": n["excluded: duplicate zips (the same exam delivered again)"],
        "zips_merged": n["merged: parts of a CT exam split over several zips"],
        "exams": n["exams"],
        "dropped": sum(v for k, v in n.items() if k.startswith("dropped inside exams")),
        "errors_in_exams": n["errors inside exams (audit rows)"],
        "exams_without_sample": n["exams with no sample"],
        "samples": n["samples"],
        "cxr": int(samples.group(1)),
        "ct": int(samples.group(2)),
        "patients": n["patients"],
        **{f"{s}_patients": n[f"{s}: patients / samples"] for s in ("train", "val", "test")},
    }


def _report_counts(page: str) -> dict[str, int]:
    header = page[page.index("<header>") : page.index("</header>")]
    cards = dict(
        (k, (int(v), sub))
        for v, k, sub in re.findall(
            r'<div class="v">(\d+)</div><div class="k">([^<]+)</div><div class="k2">([^<]*)</div>',
            header,
        )
    )
    sub = {k: s for k, (_, s) in cards.items()}
    num = {k: v for k, (v, _) in cards.items()}

    def first(text: str, pattern: str) -> int:
        return int(re.search(pattern, text).group(1))  # type: ignore[union-attr]

    return {
        "zips_found": num["zips found"],
        "zips_skipped": first(sub["zips found"], r"(\d+) skipped"),
        "zips_error": num["zips with nothing usable"],
        "zips_duplicate": num["duplicate zips"],
        "zips_merged": num["merged zips"],
        "exams": num["exams"],
        "dropped": num["dropped inside exams"],
        "errors_in_exams": num["errors inside exams"],
        "exams_without_sample": first(sub["exams"], r"(\d+) with no sample"),
        "samples": num["samples"],
        "cxr": first(sub["samples"], r"(\d+) radiographs"),
        "ct": first(sub["samples"], r"(\d+) CT volumes"),
        "patients": num["patients"],
        **{
            f"{s}_patients": first(sub["patients"], rf"{s} (\d+)") for s in ("train", "val", "test")
        },
    }


def test_console_report_flow_and_card_show_one_set_of_counts(
    first_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    clone, p = first_run
    out = clone / "hiroml-out"
    console = _console_counts(p.stdout)
    assert console["zips_found"] == 43 and console["samples"] == 29  # the tiny demo
    assert _svg_counts((out / "flow.svg").read_text()) == console
    assert _card_counts((out / "DATASET.md").read_text()) == console
    assert _report_counts((out / "report.html").read_text()) == console


def test_the_demo_card_and_report_say_the_data_are_synthetic(
    first_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out = first_run[0] / "hiroml-out"
    card = (out / "DATASET.md").read_text()
    assert "**Synthetic data.**" in card.split("## Identification")[0]
    assert "no patient's data" in card and "](http" not in card and "pypi" not in card.lower()
    assert "<b>Synthetic data.</b>" in (out / "report.html").read_text()

"""Long header fuzzing, by hand (not part of CI).

Runs the property of ``tests/test_fuzz.py`` (mutated real DICOM headers, zipped, through
``hiroml.ingest.index.index_zip`` and the radiograph and CT ``convert_exam``: a result or a
Problem, never an exception) for as long as asked, in rounds of fresh random cases, and
prints the number of cases executed and what became of them::

    python scripts/fuzz_headers.py --minutes 10

A failure prints hypothesis's shrunk example and the traceback, and exits 1. The seed files
come from pydicom's test data and :mod:`hiroml.synth`; nothing is written outside a
temporary folder.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_fuzz
from hypothesis import given


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="how long to fuzz (default 5)")
    p.add_argument("--round", type=int, default=500, help="cases per hypothesis round")
    a = p.parse_args(argv)
    outcomes: collections.Counter[str] = collections.Counter()
    stop = time.monotonic() + 60 * a.minutes
    tmp = tempfile.TemporaryDirectory()

    @test_fuzz.fuzz_settings(max_examples=a.round)
    @given(data=test_fuzz.mutated_dicom())
    def one(data: bytes) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcomes[test_fuzz.check_member(data, Path(tmp.name))] += 1

    t0 = time.monotonic()
    rounds = 0
    try:
        while time.monotonic() < stop:
            one()
            rounds += 1
    except Exception as e:
        print(f"fuzz_headers: FAILED after {sum(outcomes.values())} cases: {e!r}")
        raise
    finally:
        tmp.cleanup()
    n = sum(outcomes.values())
    print(
        f"fuzz_headers: {n} cases executed in {time.monotonic() - t0:.0f} s ({rounds} rounds): "
        + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        + "; no exception"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

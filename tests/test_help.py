"""``--help`` of every console script: plain text (no reST markup from docstrings), a
description and examples; ``hiroml-synth`` explains its sizes; ``hiroml-build`` lists every
configuration key with its default and the meaning docs/configuration.md gives it."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hiroml.cli import keys
from hiroml.synth import SIZES

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
MARKUP = ("``", ":func:", ":class:", ":mod:", ":data:", ":meth:", ":attr:", ":mod:")


def _help(script: str, capsys: pytest.CaptureFixture[str]) -> str:
    """``SCRIPT --help``: argparse commands in this process, hiroml-build (Hydra) in its own."""
    if script == "hiroml-build":
        p = subprocess.run(
            [str(BIN / script), "--help"], capture_output=True, text=True, timeout=120
        )
        assert p.returncode == 0, p.stderr
        return p.stdout + p.stderr
    module = importlib.import_module(SCRIPTS[script].split(":")[0])
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code in (0, None)
    out = capsys.readouterr()
    return out.out + out.err


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_is_plain_text_with_a_description_and_examples(
    script: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(script, capsys)
    assert not [m for m in MARKUP if m in text], text
    assert "Traceback" not in text
    body = text.split("options:")[0] if "options:" in text else text
    assert len(re.findall(r"[a-z]{3,}", body)) > 12, body  # a description, not a usage line
    if script != "hiroml-versions":
        assert "example" in text.lower(), text


def test_synth_help_explains_every_size(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help("hiroml-synth", capsys)
    for size in SIZES:
        entry = re.search(rf"^  {size} +(.*?)(?=^  \w+ {{2,}}|^\n|\Z)", text, flags=re.M | re.S)
        assert entry is not None, (size, text)
        what = " ".join(entry.group(1).split())
        assert re.search(r"\d+ zips", what) and re.search(r"\d+(\.\d+)? [MG]B", what), what
        assert re.search(r"about \d+ (s|CPU-minutes)", what), what


def _docs_rows() -> dict[str, tuple[str, str]]:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]*)` \| (.*) \|$", text, flags=re.M)
    return {k: (d, m) for k, d, m in rows}


def test_build_help_lists_every_key_with_the_docs_meaning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = _help("hiroml-build", capsys)
    schema = keys.defaults()
    assert set(keys.MEANINGS) == set(schema), "a key without a one-line meaning (or a stale one)"
    listed = {}
    for line in text.splitlines():
        m = re.match(r"^  ([a-z_.0-9]+) = (.*?)  +(\S.*)$", line)
        if m and m.group(1) in schema:
            listed[m.group(1)] = (m.group(2).strip(), m.group(3))
    assert listed.keys() == schema.keys()
    docs = _docs_rows()
    assert docs == listed, "docs/configuration.md's table differs from hiroml-build --help"
    assert docs["cxr.size"] == ("[512, 512]", "output (height, width), pixels")

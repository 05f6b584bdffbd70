"""Every fenced block of README.md and then of the user pages in docs/ (:data:`PAGES`), in
their order, as a new user runs it: ``bash`` lines
(the ``hiroml-*`` commands and ``python scripts/...``), ``python`` snippets (one namespace, as
in one session), the Lightning ``yaml``. They run in one folder where the first ``hiroml-build``
makes ``hiroml-out`` from the demo datamart (the tiny size: ``demo_size=tiny``, the only
setting added), so ``hiroml-out-demo-datamart`` stands in for ``/data/datamart``.

Nothing is skipped silently: a line that cannot run in a test is in :data:`EXCLUDED` with its
reason, a placeholder the README uses for the reader's own values is in :data:`PLACEHOLDERS`
(or replaced by :func:`_versions` with a version of the output), a block that is a picture and
not code is in :data:`NOT_CODE`; anything else the README gains fails this test until it runs
or is listed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # about two minutes on 2 shared cores: some 30 commands

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
#: docs/ pages whose blocks are not instructions to a user, with the reason.
NOT_USER_PAGES: dict[str, str] = {
    "design.md": "the design notes the code cites: contracts and layouts, not steps to run",
    "style.md": "the house style for contributors",
}
#: docs/ pages in the order the README's contents link them, then any other, by name.
LINKED = [REPO / m for m in re.findall(r"\]\((docs/[\w.-]+\.md)", README.read_text("utf-8"))]
DOC_PAGES = sorted(
    (REPO / "docs").glob("*.md"),
    key=lambda p: (p not in LINKED, LINKED.index(p) if p in LINKED else 0, p.name),
)
#: README first (its first build makes hiroml-out), then every user page of docs/.
PAGES: list[Path] = [README, *(p for p in DOC_PAGES if p.name not in NOT_USER_PAGES)]

#: Lines of bash blocks that do not run here (prefix match), with the reason.
EXCLUDED: dict[str, str] = {
    "pip install": "installs packages: the tests run inside that install",
    "git clone": "needs the repository's address; the tests run in a clone",
    "python3.11 -m venv": "makes a virtual environment: the tests run inside one",
    "python -m pytest": "the test suite itself",
    "ruff check": "lint and type checks: CI's lint job",
    "python scripts/fuzz_headers.py": "runs for 30 minutes, by hand (tests/test_fuzz.py runs it briefly)",
    "python scripts/screenshot_report.py": "needs Chromium, not installed in CI",
    "hiroml-build executor=dask executor.scheduler=": "needs a running Dask cluster",
}
#: Python blocks that do not run here (by their first line), with the reason.
EXCLUDED_PY: dict[str, str] = {
    "from dask_jobqueue import SLURMCluster": "needs a Slurm cluster and dask-jobqueue",
}
#: Blocks without a language that are pictures (a folder tree, a diagram), by first line.
NOT_CODE: dict[str, str] = {
    "/data/datamart/": "the datamart's folder layout",
    "<out>/": "the output folder's layout",
    "discover -> index -> identity": "the stages as a diagram",
    "hiroml/": "the package layout",
}
#: The reader's own paths and values, and what stands in for them here.
PLACEHOLDERS: dict[str, str] = {
    "/data/datamart": "hiroml-out-demo-datamart",
    "/data/clinical.csv": "hiroml-out-demo-datamart/clinical.csv",
    "/data/hiroml": "real-out",  # a second output, so hiroml-out keeps the demo's labels
    "paths.datamart=...": "paths.datamart=hiroml-out-demo-datamart",
    "--prune [--keep 5]": "--prune --keep 5",
    "out/shards/cxr-ab12.h5": "{cxr_shard}",
}
#: Added to every ``hiroml-build``: the tiny demo datamart, and no progress bars.
BUILD_ARGS = ("demo_size=tiny", "progress=false")


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    text: str
    page: str = "README.md"  # README.md or docs/<page>.md


def readme_blocks(path: Path = README) -> list[Block]:
    page = str(path.relative_to(REPO))
    blocks, lang, start, body = [], None, 0, []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip(), n, []
            else:
                blocks.append(Block(lang, start, "\n".join(body), page))
                lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"{page}: an unclosed fence"
    return blocks


def commands(text: str) -> list[str]:
    """The commands of a bash block: continuations joined, comments and blank lines dropped."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(line.split(" #")[0].strip() if "#" in line else line.strip())
    return out


def _versions(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "versions").iterdir() if re.match(r"\d{4}-", p.name))


def _substitute(text: str, work: Path) -> str:
    text = re.sub(r"(?<= )OUT(?= |$)", "hiroml-out", text, flags=re.MULTILINE)  # docs' OUT
    for old, new in PLACEHOLDERS.items():
        text = text.replace(old, new)
    if "{cxr_shard}" in text:
        rows = json.loads((work / ".readme-shard.json").read_text())
        text = text.replace("{cxr_shard}", rows["shard"])
    # version names and numbers: the output's own (the second-newest and the newest)
    for folder in ("real-out", "hiroml-out"):
        if f"{folder} " in text + " " and (work / folder / "versions").is_dir():
            names = _versions(work / folder)
            older, newer = names[max(len(names) - 2, 0)], names[-1]
            text = re.sub(r"\b0006-81c0d9aa\b|\b0003-1a2b3c4d\b", older, text)
            text = re.sub(r"--diff 6 7\b", f"--diff {int(older[:4])} {int(newer[:4])}", text)
            text = re.sub(r"(--unpin|-version) 6\b", rf"\1 {int(older[:4])}", text)
    return text


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``hiroml-out`` built by a bare ``hiroml-build``: the README's first line
    (``pip install ... && hiroml-build``), run before its first Python snippet reads it."""
    work = tmp_path_factory.mktemp("readme")
    _run("hiroml-build", work)
    _remember_a_shard(work)
    return work


def _excluded(cmd: str) -> str | None:
    return next((why for prefix, why in EXCLUDED.items() if cmd.startswith(prefix)), None)


def _run(cmd: str, work: Path) -> None:
    cmd = _substitute(cmd, work)
    args = shlex.split(cmd)
    if args[0] == "hiroml-build":
        args += BUILD_ARGS
    if args[0].startswith("hiroml-"):
        args[0] = str(BIN / args[0])
    elif args[:2] == ["python", "scripts/train_cxr_example.py"]:
        args = [sys.executable, str(REPO / args[1]), *args[2:]]
    else:
        raise AssertionError(f"README command neither run nor excluded: {cmd}")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode == 0, f"{cmd}\nexit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert "Traceback" not in p.stdout + p.stderr, cmd


def _namespace() -> dict[str, Any]:
    """What the README's Python snippets take as the reader's own: a model and a trainer."""
    import lightning.pytorch as pl
    import torch

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(64, 1)
            )

        def training_step(self, batch: dict[str, Any], _: int) -> torch.Tensor:
            return self.net(batch["image"]).mean() ** 2

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    trainer = pl.Trainer(
        fast_dev_run=True, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    return {"model": Model(), "trainer": trainer}


_NS: dict[str, Any] = {}


def _python(block: Block, work: Path) -> None:
    first = block.text.strip().splitlines()[0]
    if any(first.startswith(k) for k in EXCLUDED_PY):
        return
    if not _NS:
        _NS.update(_namespace())
    text = _substitute(block.text, work)
    if "sample_key" in text and "sample_key =" not in text:  # the h5py snippet's own variable
        _NS["sample_key"] = json.loads((work / ".readme-shard.json").read_text())["sample_key"]
    exec(compile(text, f"{block.page}:{block.line}", "exec"), _NS)


def _yaml(block: Block, work: Path) -> None:
    import yaml
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = yaml.safe_load(_substitute(block.text, work).replace("real-out", "hiroml-out"))
    dm = instantiate(OmegaConf.create(cfg))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[0] == min(cfg["batch_size"], len(dm.datasets["train"]))
    dm.teardown("fit")


BLOCKS = [b for page in PAGES for b in readme_blocks(page)]


def test_every_block_is_run_or_listed() -> None:
    langs = {b.lang for b in BLOCKS}
    assert langs <= {"bash", "python", "yaml", "", "text"}, langs
    pictures = [b for b in BLOCKS if b.lang in ("", "text")]
    for b in pictures:  # README's are listed; a docs page's picture must not be a command
        first = b.text.strip().splitlines()[0].strip()
        if b.page == "README.md":
            assert any(first.startswith(k) for k in NOT_CODE), (b.page, b.line, first)
        else:
            assert not first.startswith(("hiroml-", "python ", "pip ")), (b.page, b.line, first)
    assert {p.name for p in PAGES} >= {"README.md", "configuration.md", "loading.md"}
    for b in BLOCKS:
        if b.lang == "bash":
            for cmd in commands(b.text):
                assert _excluded(cmd) or cmd.startswith(("hiroml-", "python scripts/")), cmd


def test_every_docs_page_is_linked_from_the_readme() -> None:
    assert [p.name for p in DOC_PAGES if p not in LINKED] == []


def test_the_demo_build_has_the_demo_clinical_labels(work: Path) -> None:
    """With no datamart, the build joins the demo datamart's clinical table: the README's
    ``label="icu"`` works on the demo output."""
    from hiroml import HiromlDataset

    ds = HiromlDataset(work / "hiroml-out", split="train", modality="cxr", label="icu")
    assert len(ds) > 0 and ds[0]["label"].dtype.is_floating_point
    build = json.loads(next((work / "hiroml-out" / "versions").glob("*/build.json")).read_text())
    assert "hiroml-out-demo-datamart/clinical.csv" in json.dumps(build)


def test_readme_in_order(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each block in turn; the failure names the README line."""
    monkeypatch.chdir(work)
    ran: list[str] = []
    for b in BLOCKS:
        if b.lang == "bash":
            for cmd in commands(b.text):
                if _excluded(cmd) is None:
                    _run(cmd, work)
                    ran.append(cmd)
                    if (work / "hiroml-out" / "manifest.parquet").is_file():
                        _remember_a_shard(work)
        elif b.lang == "python":
            _python(b, work)
            ran.append(f"python {b.page}:{b.line}")
        elif b.lang == "yaml":
            _yaml(b, work)
            ran.append(f"yaml {b.page}:{b.line}")
    assert any(c.startswith("hiroml-build") for c in ran) and len(ran) > 20, ran


def _remember_a_shard(work: Path) -> None:
    import pandas as pd

    m = pd.read_parquet(work / "hiroml-out" / "manifest.parquet")
    row = m[m["modality"] == "cxr"].iloc[0]
    (work / ".readme-shard.json").write_text(
        json.dumps({"shard": f"hiroml-out/{row['shard']}", "sample_key": row["sample_key"]})
    )

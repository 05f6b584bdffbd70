"""The house rules, checked on the source: no import cycle between hiroml's modules
(function-level imports included), no module over 600 lines, no function over 80 lines, no class
over 300."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "hiroml"
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 300
MAX_MODULE_LINES = 600


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return out


def _imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """The hiroml modules ``tree`` imports anywhere (``from pkg import sub`` counts as ``sub``)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            subs = [a.name for a in node.names if f"{node.module}.{a.name}" in modules]
            found.update(f"{node.module}.{s}" for s in subs)
            if len(subs) < len(node.names):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as a path, or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return []


def test_no_import_cycle_between_hiroml_modules() -> None:
    modules = _modules()
    graph = {name: _imports(tree, set(modules)) - {name} for name, tree in modules.items()}
    assert _cycle(graph) == []
    # the check itself finds a cycle when there is one
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_function_or_class_too_long_to_read() -> None:
    limits = {ast.FunctionDef: MAX_FUNCTION_LINES, ast.AsyncFunctionDef: MAX_FUNCTION_LINES}
    limits[ast.ClassDef] = MAX_CLASS_LINES
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in _modules().items()
        for node in ast.walk(tree)
        if type(node) in limits and (node.end_lineno or 0) - node.lineno + 1 > limits[type(node)]
    ]
    assert long == []


def test_no_module_too_long_to_read() -> None:
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in sorted(PACKAGE.rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


# A literal that is a vocab value but means something else, by (module, value).
NOT_VOCAB = {
    ("hiroml/data/lightning.py", "test"),  # Lightning's stage name ("fit", "validate", "test")
}


def _vocab_values() -> set[str]:
    from hiroml import vocab

    names = {v for k, v in vars(vocab).items() if k.isupper() and isinstance(v, str)}
    names -= {vocab.SHARDS_DIR, vocab.VERSIONS_DIR}  # also config sections and record keys
    return names | {str(m) for e in (vocab.Split, vocab.Action, vocab.View) for m in e}


def test_no_output_name_or_split_action_view_literal_outside_vocab() -> None:
    """Split, action and view values and output file names are spelled in hiroml/vocab.py
    only; docstrings may name them, code uses the names."""
    values = _vocab_values()
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel == "hiroml/vocab.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and n.body
            and isinstance(n.body[0], ast.Expr)
        }
        found += [
            f"{rel}:{n.lineno}: {n.value!r}"
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant)
            and n.value in values
            and id(n) not in docs
            and (rel, n.value) not in NOT_VOCAB
        ]
    assert found == []
    assert "manifest.parquet" in values and "train" in values and "frontal" in values


@pytest.mark.parametrize(
    "override", ["default", "experiment=covid_cxr", "experiment=covid_ct", "executor=dask"]
)
def test_the_composed_config_is_what_it_was_key_by_key(override: str) -> None:
    """Each default is stated once, in hiroml/config.py; configs/ picks groups. The composed
    values are those the configs composed to when they restated every default
    (tests/composed_config.json, composed then at main 1755ae6; ``runtime`` is newer and
    bound to the environment)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import hiroml.cli.build  # noqa: F401  (registers the schema)

    want = json.loads((Path(__file__).parent / "composed_config.json").read_text())[override]
    with initialize_config_module(version_base="1.3", config_module="hiroml.conf"):
        cfg = compose("build", overrides=[] if override == "default" else [override])
    got = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(got, dict)
    got.pop("runtime")

    def flat(d: dict[str, object], prefix: str = "") -> dict[str, object]:
        out: dict[str, object] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    # every key composed then composes to the same value now; keys added since are new
    # settings (their defaults are checked where they are tested)
    now, then = flat(got), flat(want)
    assert {k: now.get(k, "<gone>") for k in then} == then


def test_configs_state_no_default_of_the_structured_config() -> None:
    """No YAML file under configs/ restates a BuildConfig default (experiments excepted: they
    name what they choose)."""
    import dataclasses

    import yaml

    from hiroml.config import BuildConfig

    defaults = dataclasses.asdict(BuildConfig())
    configs = PACKAGE.parent / "configs"
    restated = []
    for path in sorted(configs.rglob("*.yaml")):
        rel = path.relative_to(configs).as_posix()
        if rel.startswith(("experiment/", "hydra/", "local/")):
            continue
        data = yaml.safe_load(path.read_text()) or {}
        group = rel.split("/")[0] if "/" in rel else ""
        section = defaults.get(group, defaults) if group else defaults
        for key, value in data.items():
            if key in ("defaults", "hydra") or not isinstance(section, dict):
                continue
            if key in section and section[key] == value and not str(value).startswith("${"):
                restated.append(f"{rel}: {key}")
    assert restated == []


def test_hiroml_data_reads_outputs_through_the_reader_only() -> None:
    """The Dataset, MONAI, Lightning and export code import, of hiroml, only the read side
    (hiroml.store.reader), the vocabulary, the errors, the float16 casts (arithmetic, no
    file access) and each other."""
    allowed = {
        "hiroml.store.reader", "hiroml.vocab", "hiroml.errors", "hiroml.data",
        "hiroml.store.halfcast",
    }  # fmt: skip
    modules = _modules()
    found = {
        f"{name} imports {dep}"
        for name, tree in modules.items()
        if name.startswith("hiroml.data.") or name == "hiroml.data"
        for dep in _imports(tree, set(modules))
        if dep not in allowed and not dep.startswith("hiroml.data.")
    }
    assert found == set()

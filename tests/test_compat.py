"""The public modules that moved stay importable from their old paths, with a warning."""

from __future__ import annotations

import importlib
import sys

import pytest

# old path -> the module that holds its names now
MOVED = {
    "hiroml.dataset": "hiroml.data.dataset",
    "hiroml.monai": "hiroml.data.monai",
    "hiroml.lightning": "hiroml.data.lightning",
    "hiroml.export": "hiroml.data.export",
    "hiroml.verify": "hiroml.store.verify",
    "hiroml.shards": "hiroml.store.shards",
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_warns_and_gives_the_same_objects(old: str) -> None:
    if old in ("hiroml.monai",):
        pytest.importorskip("monai")
    if old in ("hiroml.lightning",):
        pytest.importorskip("lightning")
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated; import {MOVED[old]}"):
        alias = importlib.import_module(old)
    new = importlib.import_module(MOVED[old])
    assert alias.__all__
    for name in alias.__all__:
        assert getattr(alias, name) is getattr(new, name, getattr(alias, name))
    shared = [n for n in alias.__all__ if hasattr(new, n)]
    assert shared and all(getattr(alias, n) is getattr(new, n) for n in shared)


def test_the_top_level_api_and_the_versions_package_keep_their_names() -> None:
    import hiroml
    import hiroml.versions as versions
    from hiroml.data.dataset import HiromlDataset, load_sitk
    from hiroml.versions.listing import list_versions
    from hiroml.versions.pruning import prune

    assert hiroml.HiromlDataset is HiromlDataset and hiroml.load_sitk is load_sitk
    assert {"HiromlDataset", "HiromlError", "load_sitk", "__version__"} <= set(dir(hiroml))
    assert versions.list_versions is list_versions and versions.prune is prune
    for name in ("MANIFEST", "BUILD_JSON", "dataset_hash", "diff", "pin", "unpin", "publish"):
        assert hasattr(versions, name)

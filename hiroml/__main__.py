"""``python -m hiroml`` is ``hiroml-build``."""

from hiroml.cli import build

build()

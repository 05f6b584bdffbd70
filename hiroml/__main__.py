"""``python -m hiroml`` is ``hiroml-build``."""

from hiroml.cli.build import main

main()

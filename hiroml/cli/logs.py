"""What the console shows during a build: hiroml's own messages, one line each.

The Hydra job logging config (``configs/hydra/job_logging/hiroml.yaml``) sends every record
from INFO up to the run log (``<output>/.hiroml/runs/<time>/``), tracebacks included, and to
the console only hiroml's own warnings and errors (:data:`CONSOLE_LOGGER`), formatted by
:class:`OneLineFormatter`. Third-party loggers (pydicom, h5py, dask/distributed, PIL,
numcodecs...) and Python warnings (:func:`logging.captureWarnings`) reach the run log only:
a damaged file is reported by hiroml in the audit, not as a third-party traceback that looks
like a crash to a person watching.
"""

from __future__ import annotations

import logging

#: The logger whose records (and its children's) the console shows.
CONSOLE_LOGGER = "hiroml"


class OneLineFormatter(logging.Formatter):
    """Formats a record on one line, without its traceback or stack: a multi-line message
    (e.g. an error listing each decoder that refused a frame) is joined with `` | ``. The
    traceback still reaches the run log, whose handler uses a plain formatter."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            text = super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def console_filter() -> logging.Filter:
    """A handler filter that passes hiroml's records only (``hiroml`` and ``hiroml.*``)."""
    return logging.Filter(CONSOLE_LOGGER)


__all__ = ["CONSOLE_LOGGER", "OneLineFormatter", "console_filter"]

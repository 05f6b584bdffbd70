"""The command-line entry points, one module per command.

A command's process does its matrix products with one BLAS thread. numpy's and OpenCV's
OpenBLAS each start a helper thread per extra core as they load, and a helper spins on its
core for a while after loading and after every product. A build's products are few and
small (the near-duplicate filters): with the helpers, a build spends 0.3-0.4 s more CPU
(per-thread CPU from ``/proc/<pid>/task``), a process that makes and searches 30,000
signatures 7.8 s instead of 5.6 for the same 1.3 s search, and the helpers hold a core that
the conversion workers or a training job could use. Importing this package, before numpy
or OpenCV is loaded, sets ``OPENBLAS_NUM_THREADS=1`` for the process and the workers it
starts, unless the environment names a number already (the user's choice is kept). The
library (``import hiroml``, the PyTorch dataset) leaves the environment as it is.

A command's process also collects its young objects less often (the garbage collector's
threshold: :func:`hiroml.pipeline.allocator.collect_young_less_often`), before its imports
make the objects it keeps to its end.
"""

import os

#: the variable OpenBLAS reads as it loads (numpy's and OpenCV's copies alike)
BLAS_THREADS_VARIABLE = "OPENBLAS_NUM_THREADS"

os.environ.setdefault(BLAS_THREADS_VARIABLE, "1")

from hiroml.pipeline.allocator import collect_young_less_often  # noqa: E402 - after the above

collect_young_less_often()

"""Where tasks run: a local process pool (default) or a Dask distributed cluster.

No home-made scheduler: :class:`concurrent.futures.ProcessPoolExecutor` locally, and
``dask.distributed`` (a given scheduler address, or a ``LocalCluster`` started here) for
clusters; on Slurm, start the cluster with dask-jobqueue and pass its scheduler address.
Results are yielded as tasks finish; the driver orders them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TYPE_CHECKING

from tqdm import tqdm

from hiroml.config import ExecutorConfig

if TYPE_CHECKING:
    from hiroml.pipeline import TaskResult, TaskSpec

log = logging.getLogger(__name__)


def _bar(specs: Sequence[TaskSpec], progress: bool) -> tqdm:
    n_exams = sum(len(s.exams) for s in specs)
    return tqdm(
        total=n_exams,
        unit="exam",
        desc=f"convert {len(specs)} tasks",
        disable=not progress or not specs,
        leave=False,
    )


def _advance(bar: tqdm, spec: TaskSpec, result: TaskResult, tally: list[float]) -> None:
    """Count a finished task: exams on the bar, images written and zip MB/s read beside it."""
    tally[0] += result.bytes_read / 1e6
    tally[1] += len(result.samples)
    bar.update(len(spec.exams))
    rate = tally[0] / max(bar.format_dict.get("elapsed", 0.0) or 1e-9, 1e-9)
    bar.set_postfix_str(f"{int(tally[1])} images, {rate:.1f} MB/s in")


def run_tasks(
    specs: Sequence[TaskSpec], cfg: ExecutorConfig, *, progress: bool = True
) -> Iterator[TaskResult]:
    """Run every task; yield each result as it completes (any order)."""
    from hiroml.pipeline import run_task

    if not specs:
        return
    # Largest first (bytes of DICOM to convert): a big CT task started last would leave the
    # other workers idle at the end. Results are re-ordered by the driver.
    specs = sorted(specs, key=lambda s: -sum(i.member_size for e in s.exams for i in e.instances))
    mb = [0.0, 0.0]  # MB read, images written
    with _bar(specs, progress) as bar:
        if cfg.kind == "dask":
            yield from _run_dask(specs, cfg, bar, mb)
            return
        workers = min(cfg.n_workers, len(specs))
        if workers <= 1:
            for spec in specs:
                result = run_task(spec)
                _advance(bar, spec, result, mb)
                yield result
            return
        # fork: workers inherit the logging set up by the entry point. The driver holds no
        # open HDF5 file while tasks run, so h5py's fork pitfall does not arise.
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run_task, spec): spec for spec in specs}
            for fut in as_completed(futures):
                result = fut.result()
                _advance(bar, futures[fut], result, mb)
                yield result


def _run_dask(
    specs: Sequence[TaskSpec], cfg: ExecutorConfig, bar: tqdm, mb: list[float]
) -> Iterator[TaskResult]:
    from dask.distributed import Client, LocalCluster
    from dask.distributed import as_completed as dask_completed

    from hiroml.pipeline import run_task

    cluster = None
    if cfg.scheduler:
        client = Client(cfg.scheduler)
    else:
        cluster = LocalCluster(
            n_workers=cfg.n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,  # distributed's chatter stays off the console
        )
        client = Client(cluster)
    try:
        log.info("dask: %s", client)
        futures = client.map(run_task, list(specs), pure=False)
        spec_of = {f.key: s for f, s in zip(futures, specs, strict=True)}
        for fut in dask_completed(futures):
            result = fut.result()
            _advance(bar, spec_of[fut.key], result, mb)
            yield result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

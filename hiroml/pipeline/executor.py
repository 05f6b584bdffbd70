"""Where work runs: a local process pool (default) or a Dask distributed cluster.

One executor for every parallel stage (the index of the zips and the conversion tasks):
:func:`map_items` maps a picklable function over items. No home-made scheduler:
:class:`concurrent.futures.ProcessPoolExecutor` locally, and ``dask.distributed`` (a given
scheduler address, or a ``LocalCluster`` started here) for clusters; on Slurm, start the
cluster with dask-jobqueue and pass its scheduler address. Results are yielded as items
finish; the caller orders them. This module imports nothing of the stages it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

from tqdm import tqdm

from hiroml.config import ExecutorConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def map_items(
    fn: Callable[[T], R],
    items: Sequence[T],
    cfg: ExecutorConfig,
    *,
    desc: str,
    unit: str,
    weight: Callable[[T], float] | None = None,
    step: Callable[[T], float] = lambda _item: 1,
    unit_scale: bool = False,
    progress: bool = True,
    status: Callable[[R, float], str] | None = None,
) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))`` for every item, in the order the items finish.

    ``cfg.kind`` chooses a local process pool of ``cfg.n_workers`` (one worker or one item:
    run here, in this process) or Dask. ``weight`` sorts the items heaviest first, so that
    a big item started last does not leave the other workers idle. The progress bar (``desc``,
    in ``unit``) advances by ``step(item)`` per finished item; ``status(result, seconds)``
    gives the text shown beside it. ``fn`` and the items must pickle.
    """
    if not items:
        return
    todo = sorted(items, key=lambda i: -weight(i)) if weight is not None else list(items)
    bar = tqdm(
        total=sum(step(i) for i in todo),
        unit=unit,
        unit_scale=unit_scale,
        desc=desc,
        disable=not progress,
        leave=False,
    )
    with bar:
        for item, result in _run(fn, todo, cfg):
            bar.update(step(item))
            if status is not None:
                elapsed = bar.format_dict.get("elapsed", 0.0) or 1e-9
                bar.set_postfix_str(status(result, elapsed), refresh=False)
            yield item, result


def _run(fn: Callable[[T], R], items: list[T], cfg: ExecutorConfig) -> Iterator[tuple[T, R]]:
    if cfg.kind == "dask":
        yield from _run_dask(fn, items, cfg)
        return
    workers = min(cfg.n_workers, len(items))
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    # fork: workers inherit the logging set up by the entry point. The driver holds no open
    # HDF5 file while work runs, so h5py's fork pitfall does not arise.
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        futures = {pool.submit(fn, item): item for item in items}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
    except (KeyboardInterrupt, GeneratorExit):  # Ctrl-C, SIGTERM: stop now, not after the queue
        _stop(pool)
        raise
    pool.shutdown()


def _stop(pool: ProcessPoolExecutor, *, grace: float = 1.0) -> None:
    """Cancel what has not started and stop the workers (SIGTERM, then SIGKILL after
    ``grace`` seconds): what they were writing is a task's temporary file, which the next
    build redoes."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(grace)
        if proc.is_alive():
            proc.kill()
            proc.join(grace)


def _run_dask(fn: Callable[[T], R], items: list[T], cfg: ExecutorConfig) -> Iterator[tuple[T, R]]:
    from dask.distributed import Client, LocalCluster
    from dask.distributed import as_completed as dask_completed

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
        futures = client.map(fn, items, pure=False)
        item_of = {f.key: item for f, item in zip(futures, items, strict=True)}
        for fut in dask_completed(futures):
            yield item_of[fut.key], fut.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

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
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tqdm import tqdm

from hiroml.config import ExecutorConfig
from hiroml.errors import WorkerDiedError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: what a signal that killed a worker usually means
_SIGNAL_HINTS = {
    signal.SIGKILL: "out of memory?",
    signal.SIGSEGV: "a crash in native code",
    signal.SIGBUS: "a crash in native code",
    signal.SIGABRT: "a crash in native code",
}


@dataclass(frozen=True, slots=True)
class Retry(Generic[T, R]):
    """What to do with an item whose worker process died twice: ``split(item)`` cuts it into
    pieces run one at a time, each alone in a process; ``died(piece, reason)`` is the result
    of a piece whose process died (``reason``: :func:`death_reason`); ``join(item, results)``
    makes the item's result of its pieces' results, in the order of ``split``."""

    split: Callable[[T], Sequence[T]]
    died: Callable[[T, str], R]
    join: Callable[[T, list[R]], R]


def death_reason(exitcode: int | None) -> str:
    """``"the worker process died (signal 9 — out of memory?)"`` for a process that ended
    with ``exitcode`` (negative: killed by that signal)."""
    if exitcode is None or exitcode == 0:
        return "the worker process died"
    if exitcode > 0:
        return f"the worker process died (exit status {exitcode})"
    try:
        hint = _SIGNAL_HINTS.get(signal.Signals(-exitcode), "")
    except ValueError:
        hint = ""
    return f"the worker process died (signal {-exitcode}{' — ' + hint if hint else ''})"


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
    retry: Retry[T, R] | None = None,
) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))`` for every item, in the order the items finish.

    ``cfg.kind`` chooses a local process pool of ``cfg.n_workers`` (one worker or one item:
    run here, in this process) or Dask. ``weight`` sorts the items heaviest first, so that
    a big item started last does not leave the other workers idle. The progress bar (``desc``,
    in ``unit``) advances by ``step(item)`` per finished item; ``status(result, seconds)``
    gives the text shown beside it. ``fn`` and the items must pickle.

    A worker process that dies (see the module docstring) costs the items in flight a second
    run; an item in flight at a second death is cut into pieces with ``retry``, or without it
    raises
    :class:`~hiroml.errors.WorkerDiedError` naming the signal. With one worker the items run
    in this process, where a death is the caller's.
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
        for item, result in _run(fn, todo, cfg, retry):
            bar.update(step(item))
            if status is not None:
                elapsed = bar.format_dict.get("elapsed", 0.0) or 1e-9
                bar.set_postfix_str(status(result, elapsed), refresh=False)
            yield item, result


def _run(
    fn: Callable[[T], R], items: list[T], cfg: ExecutorConfig, retry: Retry[T, R] | None
) -> Iterator[tuple[T, R]]:
    if cfg.kind == "dask":
        yield from _run_dask(fn, items, cfg, retry)
        return
    workers = min(cfg.n_workers, len(items))
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    yield from _run_local(fn, items, workers, retry)


def _run_local(
    fn: Callable[[T], R], items: list[T], workers: int, retry: Retry[T, R] | None
) -> Iterator[tuple[T, R]]:
    """Run ``items`` on a process pool with at most ``workers`` items in flight (so that the
    items of a dead process are those in flight); after a death a fresh pool takes over, and
    an item in flight at two deaths is run in pieces (``retry``)."""
    queue = deque(enumerate(items))
    strikes: Counter[int] = Counter()
    suspects: list[T] = []
    reason = ""
    while queue:
        lost: list[tuple[int, T]] = []
        for item, result in _pool_round(fn, queue, workers, lost):
            if isinstance(result, _Died):
                reason = result.reason
                continue
            yield item, result
        if lost:
            log.warning("%s; %d item(s) it was running are run again", reason, len(lost))
        for i, item in reversed(lost):
            strikes[i] += 1
            if strikes[i] >= 2:
                suspects.append(item)
            else:
                queue.appendleft((i, item))
    if not suspects:
        return
    if retry is None:
        raise WorkerDiedError(
            f"{reason}, twice, running {len(suspects)} item(s); nothing published"
        )
    for item in suspects:
        yield item, retry.join(item, list(_one_at_a_time(fn, retry, item)))


@dataclass(frozen=True, slots=True)
class _Died:
    """The result of an item whose pool broke: ``reason`` says how its process ended."""

    reason: str


def _pool_round(
    fn: Callable[[T], R], queue: deque[tuple[int, T]], workers: int, lost: list[tuple[int, T]]
) -> Iterator[tuple[T, R | _Died]]:
    """Run the items of ``queue`` (taken from it as they are started) on a fresh pool of
    ``workers`` processes, until the queue is empty or a process dies; the items in flight
    when one died are appended to ``lost`` (and yielded with a :class:`_Died`)."""
    # fork: workers inherit the logging set up by the entry point. The driver holds no open
    # HDF5 file while work runs, so h5py's fork pitfall does not arise.
    pool = ProcessPoolExecutor(max_workers=min(workers, len(queue)))
    procs: dict[int, Any] = {}
    flying: dict[Future[R], tuple[int, T]] = {}

    def fill() -> None:
        while queue and len(flying) < workers and not lost:
            i, item = queue.popleft()
            flying[pool.submit(fn, item)] = (i, item)
            procs.update(getattr(pool, "_processes", None) or {})

    try:
        fill()
        while flying:
            done, _ = wait(flying, return_when=FIRST_COMPLETED)
            finished = [(fut, *flying.pop(fut)) for fut in done]
            lost += [(i, x) for f, i, x in finished if isinstance(f.exception(), BrokenProcessPool)]
            fill()  # before the caller handles the results: no worker waits on it
            for fut, _i, item in finished:
                if isinstance(fut.exception(), BrokenProcessPool):
                    yield item, _Died(_dead_reason(list(procs.values())))
                else:
                    yield item, fut.result()
    except BaseException:  # Ctrl-C, SIGTERM, an item's error (a full disk): stop now
        _stop(pool)
        raise
    pool.shutdown()


def _exit_code(proc: object, wait_s: float = 5.0) -> int | None:
    """``proc``'s exit code, waiting up to ``wait_s`` for it. The pool's own thread reaps its
    processes at the same time: a ``join`` here that loses that race returns with no code,
    which the pool's thread sets a moment later on the same process object."""
    deadline = time.monotonic() + wait_s
    while True:
        join = getattr(proc, "join", None)
        if join is not None:
            join(0.05)
        code = getattr(proc, "exitcode", None)
        if code is not None or time.monotonic() > deadline:
            return code
        time.sleep(0.01)


def _dead_reason(procs: list[object]) -> str:
    """How the first process of a broken pool that ended on its own ended (the pool
    terminates the others with SIGTERM)."""
    codes = [_exit_code(proc) for proc in procs]
    dead = [c for c in codes if c not in (None, 0, -signal.SIGTERM)]
    return death_reason(dead[0] if dead else None)


def _one_at_a_time(fn: Callable[[T], R], retry: Retry[T, R], item: T) -> Iterator[R]:
    """The results of ``item``'s pieces, each run alone in a one-process pool (a fresh one
    after a death)."""
    pool: ProcessPoolExecutor | None = None
    try:
        for piece in retry.split(item):
            pool = pool or ProcessPoolExecutor(max_workers=1)
            fut: Future[R] = pool.submit(fn, piece)
            procs = list((getattr(pool, "_processes", None) or {}).values())
            if isinstance(fut.exception(), BrokenProcessPool):
                reason = _dead_reason(procs)
                log.warning("%s on a piece run alone: it becomes an error", reason)
                pool.shutdown()
                pool = None
                yield retry.died(piece, reason)
                continue
            yield fut.result()
    except (KeyboardInterrupt, GeneratorExit):
        if pool is not None:
            _stop(pool)
        raise
    if pool is not None:
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


def _run_dask(
    fn: Callable[[T], R], items: list[T], cfg: ExecutorConfig, retry: Retry[T, R] | None
) -> Iterator[tuple[T, R]]:
    from dask.distributed import Client, KilledWorker, LocalCluster
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
            item = item_of[fut.key]
            try:
                result = fut.result()
            except KilledWorker as e:
                if retry is None:
                    raise WorkerDiedError(f"{_DASK_DIED}: {e}") from None
                log.warning("%s: %s; its pieces are run one at a time", _DASK_DIED, e)
                result = retry.join(item, list(_dask_pieces(client, fn, retry, item)))
            yield item, result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


#: the reason of a piece Dask gave up on (its worker died each time it ran it)
_DASK_DIED = "the worker process died (Dask lost the worker running it each time; out of memory?)"


def _dask_pieces(client: object, fn: Callable[[T], R], retry: Retry[T, R], item: T) -> Iterator[R]:
    """The results of ``item``'s pieces, submitted one at a time to the Dask ``client``."""
    from dask.distributed import KilledWorker

    for piece in retry.split(item):
        fut = client.submit(fn, piece, pure=False)  # type: ignore[attr-defined]
        try:
            yield fut.result()
        except KilledWorker:
            yield retry.died(piece, _DASK_DIED)

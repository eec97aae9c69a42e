"""Where a benchmark's runs execute: in this process, or in worker processes that split the machine's cores.

On a small CPU one training process does not keep every core busy: at the benchmark's sizes (batch 8, 32
tokens, e5-small) two processes of one thread each do 1.27x the fusion-training steps per second of one process
with two threads (``benchmarks/bench_fusion_forward.py``, run both ways). Runs are independent once their data
and translations are made, so ``workers`` processes take them in plan order, the next as soon as one ends. The
adapters they share come from one adapter bank on disk (``models.methods.adapter_bank``), so a worker never trains
an adapter another has trained. Records go back to the parent, which alone writes ``results.jsonl``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class InlineExecutor(Executor):
    """``Executor`` for one worker: the run executes in this process when submitted (an interrupt stops it there)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # noqa: BLE001 -- handed to whoever reads the future, as a pool would
            future.set_exception(err)
        return future


def _start_worker(threads: int, bank: str | None, levels: dict[str, int]) -> None:
    """A worker's set-up: its share of the cores, the shared adapter bank and the parent's log levels (its lines
    carry the worker's name, so two runs' logs can be told apart)."""
    import torch

    from models.methods.adapter_bank import SHARED

    torch.set_num_threads(threads)
    SHARED.persist_to(None if bank is None else Path(bank))
    logging.basicConfig(level=levels.get("", logging.INFO), format="%(asctime)s %(processName)s %(message)s",
                        datefmt="%H:%M:%S", force=True)
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)


def _log_levels() -> dict[str, int]:
    levels = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
              if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET}
    return {"": logging.getLogger().level, **levels}


def threads_per_worker(workers: int) -> int:
    """This process's torch threads (the cores it may use) split evenly, at least one each."""
    import torch

    return max(1, torch.get_num_threads() // workers)


@contextlib.contextmanager
def run_executor(workers: int, bank: Path | None) -> Iterator[Executor]:
    """One worker: this process (its adapter bank in memory, plus ``bank`` when given). More: a pool of fresh
    (spawned) processes, each with ``threads_per_worker`` torch threads, all on the adapter bank in ``bank``."""
    from models.methods.adapter_bank import SHARED

    if workers <= 1:
        before = SHARED.directory
        SHARED.persist_to(bank)
        try:
            yield InlineExecutor()
        finally:
            SHARED.persist_to(before)
        return
    threads = threads_per_worker(workers)
    log.info("benchmark: %d worker processes, %d torch thread(s) each", workers, threads)
    # No per-epoch progress bars in the workers: two would garble one terminal (the parent's bar counts runs). tqdm
    # reads TQDM_DISABLE when it is imported, which in a spawned worker happens before any initializer runs, so the
    # workers inherit it from this process's environment (they start on demand, while runs are submitted).
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(threads, None if bank is None else str(bank), _log_levels()))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before

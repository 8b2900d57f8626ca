"""Running the arena: every planned run not yet in the CSV, in this process or a process pool."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from blockzoo.bench.arena.candidates import plan, run_data
from blockzoo.bench.arena.one_run import train_one
from blockzoo.bench.arena.results import append_row, read_results, results_for, run_key
from blockzoo.bench.arena.settings import ArenaSettings

__all__ = ["run_arena"]

log = logging.getLogger("blockzoo.arena")


def _job(runner: Callable[..., dict[str, Any]], kind: str, block: str, seed: int,
         settings: ArenaSettings) -> dict[str, Any]:
    torch.set_num_threads(1)
    row: dict[str, Any] = dict(kind=kind, block=block, seed=seed, data=run_data(settings, kind, block),
                               epochs=settings.epochs, small_data=settings.small_data)
    try:
        row.update(runner(kind, block, seed, settings), status="ok", error="")
    except Exception as e:  # reported in the table and re-tried on the next call
        row.update(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0])
    row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return row


def run_arena(
    settings: ArenaSettings,
    csv_path: str | Path,
    *,
    runner: Callable[..., dict[str, Any]] = train_one,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every (block, seed) of ``plan(settings)`` not already finished in ``csv_path``;
    append each result as it ends. The backbone arena's models over its cost cap are not in
    the plan (``backbone_skips`` lists them).

    Returns the rows of these settings (old and new). ``settings.jobs > 1`` trains in
    that many processes (each with one thread); ``runner`` must then be picklable.
    """
    from tqdm.auto import tqdm

    csv_path = Path(csv_path)
    done = {run_key(r["kind"], r["block"], r["seed"], r["data"], r["epochs"], r["small_data"])
            for r in read_results(csv_path) if r["status"] == "ok"}
    todo = [(k, b, s) for k, b, s in plan(settings)
            if run_key(k, b, s, run_data(settings, k, b), settings.epochs, settings.small_data) not in done]
    log.info("arena: %d runs to do, %d already in %s", len(todo), len(done), csv_path)
    bar = tqdm(total=len(todo), desc="arena", unit="run", disable=not progress, leave=False)
    if settings.jobs <= 1:
        for k, b, s in todo:
            bar.set_postfix_str(f"{b} seed {s}")
            append_row(csv_path, _job(runner, k, b, s, settings))
            bar.update()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(settings.jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_job, runner, k, b, s, settings) for k, b, s in todo]
            for fut in as_completed(futures):
                append_row(csv_path, fut.result())
                bar.update()
    bar.close()
    return results_for(read_results(csv_path), settings)

"""Where jobs run: a pool on this machine or a Dask cluster, for sweeps and the search (notebooks 08, 10).

A job is a top-level function and its arguments; the harness calls ``fn(*args, threads=n)``,
where ``n`` shares the cores of the machine the job lands on among the jobs running there
(small models run 10-100x slower when every job takes every core). ``run_jobs`` yields each
job's ``Done(name, args, result, error)`` as it ends: a job that raises (or a Dask worker that
dies) gives its exception in ``error`` and the other jobs go on.

Here: ``workers`` threads (a job that starts its own process, as a papermill run) or
``workers`` spawned processes (a job that computes, as a search worker). On Dask
(``scheduler``: an address ``tcp://host:8786`` or a ``distributed.Client``): one task per job,
whose workers need this repository and its environment at the same path.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from collections import Counter
from typing import NamedTuple

__all__ = ["Done", "threads_per_worker", "cluster_threads", "dask_client", "run_jobs"]


class Done(NamedTuple):
    """A job that ended: its name, its arguments, what it returned, or the exception it raised."""
    name: str
    args: tuple
    result: object
    error: BaseException | None


def threads_per_worker(workers: int) -> int:
    """CPU threads for each of ``workers`` parallel jobs: oversubscribed small models run 10-100x slower."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@contextlib.contextmanager
def dask_client(scheduler):
    """A ``distributed.Client`` for ``scheduler`` (an address, or a client, used as it is and left open)."""
    from distributed import Client
    if isinstance(scheduler, Client):
        yield scheduler
        return
    client = Client(scheduler)
    try:
        yield client
    finally:
        client.close()


def cluster_threads(client) -> dict:
    """``{host: Dask threads on it}``: the jobs one machine may run at once."""
    hosts = Counter()
    for address, n in client.nthreads().items():
        hosts[address.rsplit(":", 1)[0]] += n
    return dict(hosts)


def _on_dask_worker(fn, hosts: dict, args: tuple):
    """``fn(*args)`` on a Dask worker, with its host's cores shared among the jobs that host runs."""
    from distributed import get_worker
    host = get_worker().address.rsplit(":", 1)[0]
    return fn(*args, threads=threads_per_worker(hosts.get(host, 1)))


def _dask_jobs(client, fn, jobs: dict):
    from distributed import as_completed
    hosts = cluster_threads(client)
    futures = {client.submit(_on_dask_worker, fn, hosts, args, pure=False,
                             key=f"distill-{name}-{uuid.uuid4().hex[:8]}"): name for name, args in jobs.items()}
    for future in as_completed(futures):
        name = futures[future]
        try:
            yield Done(name, jobs[name], future.result(), None)
        except Exception as err:  # the job raised, or its worker died: the other jobs go on
            yield Done(name, jobs[name], None, err)


def _local_jobs(fn, jobs: dict, workers: int, processes: bool):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
    pool = (ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn")) if processes
            else ThreadPoolExecutor(max_workers=max(1, workers)))
    threads = threads_per_worker(workers)
    with pool:
        futures = {pool.submit(fn, *args, threads=threads): name for name, args in jobs.items()}
        for future in as_completed(futures):
            name = futures[future]
            try:
                yield Done(name, jobs[name], future.result(), None)
            except Exception as err:
                yield Done(name, jobs[name], None, err)


def run_jobs(fn, jobs: dict, workers: int = 2, scheduler=None, processes: bool = False):
    """Run ``fn(*args, threads=n)`` for each ``{name: args}`` of ``jobs``; yield a ``Done`` as each ends.

    ``scheduler`` (a Dask address or client): one Dask task per job, named ``distill-<name>-...``.
    Else ``workers`` at once here, in threads, or in spawned processes with ``processes``
    (``fn`` and ``args`` must then pickle). Notebooks 08 (sweeps) and 10 (search)."""
    if scheduler is None:
        yield from _local_jobs(fn, jobs, workers, processes)
        return
    with dask_client(scheduler) as client:
        yield from _dask_jobs(client, fn, jobs)

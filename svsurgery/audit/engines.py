"""Engines: who computes the shards. The driver gives them the shards still to do and gets
each finished shard back, in whatever order they finish, and writes it (svsurgery.audit.store).

- ``local``: a process pool (forked from a fork server that imported the worker's modules once),
  one :class:`~svsurgery.audit.worker.Worker` (one onnxruntime session, one reference) per process,
  shards handed out in order; with one worker it runs in this process.
- ``ray``: Ray Data. The shards become a dataset of one row per shard; ``map_batches`` runs them
  on an actor pool (one Worker per actor, built once), batch size one shard; results stream
  back to the driver as they finish. On a cluster the model, the reference and the corpus
  paths must be readable on every node (a shared file system), and svsurgery installed there.

Rows are serialized by the worker that computed them with the same function on both engines,
and every session runs single-threaded, so the rows are byte-identical between engines on the
same machine (timing columns aside).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import numpy as np

from svsurgery.audit.corpus import Entry
from svsurgery.audit.spec import AuditSpec
from svsurgery.audit.store import Shard, dump_rows
from svsurgery.audit.worker import Worker
from svsurgery.errors import MissingDependencyError

__all__ = ["ENGINES", "available_cpus", "import_ray", "run_shards"]

ENGINES = ("local", "ray")

OnShard = Callable[[Shard, str, int], None]  # (shard, its rows serialized by dump_rows, count)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run_shards(
    spec: AuditSpec,
    shards: list[Shard],
    on_shard: OnShard,
    *,
    engine: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    notes: list[str] | None = None,
) -> dict:
    """Compute ``shards``, calling ``on_shard`` as each finishes; returns what ran (engine, workers)."""
    if engine == "ray":
        return _ray(spec, shards, on_shard, workers, ray_address, notes if notes is not None else [])
    workers = max(1, min(workers or available_cpus(), max(len(shards), 1)))
    if workers == 1:
        if shards:
            worker = Worker(spec)
            for shard in shards:
                rows = worker.shard(list(shard.entries))
                on_shard(shard, dump_rows(rows), len(rows))
        return {"engine": "local", "workers": 1}
    _local_pool(spec, shards, on_shard, workers)
    return {"engine": "local", "workers": workers}


# ----------------------------------------------------------------------------- local

_WORKER: Worker | None = None
PRELOAD = [
    "svsurgery.audit.worker",
    "svsurgery.audit.reference",
    "svsurgery.audit.deployed",
    "onnxruntime",
    "silero_vad.sequence_vad",
    "silero_vad.utils_vad",
    "kaldi_native_fbank",
]


def _start_worker(spec: AuditSpec) -> None:
    global _WORKER
    _WORKER = Worker(spec)


def _run_shard(entries) -> tuple[str, int]:
    assert _WORKER is not None, "the pool's initializer built it"
    rows = _WORKER.shard(list(entries))
    return dump_rows(rows), len(rows)


def _local_pool(spec: AuditSpec, shards: list[Shard], on_shard: OnShard, workers: int) -> None:
    # a fork server: one clean process imports the worker's modules once, then forks the workers
    # (never a fork of this process, which may hold sessions and torch threads)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(spec,))
    try:
        pending = {pool.submit(_run_shard, shard.entries): shard for shard in shards}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: pending[f].index):
                shard = pending.pop(future)
                text, count = future.result()
                on_shard(shard, text, count)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list(getattr(pool, "_processes", {}).values()):  # the pool's own children, by handle
            process.terminate()
        raise
    pool.shutdown(wait=True)


# ----------------------------------------------------------------------------- ray


class RayShardWorker:
    """One Ray actor: one Worker, built once; each call computes one shard."""

    def __init__(self, spec: AuditSpec) -> None:
        self.worker = Worker(spec)

    def __call__(self, batch):
        shards, texts, counts = [], [], []
        for index, payload in zip(batch["shard"], batch["entries"]):
            entries = [Entry(**e) for e in json.loads(str(payload))]
            rows = self.worker.shard(entries)
            shards.append(int(index))
            texts.append(dump_rows(rows))
            counts.append(len(rows))
        return {
            "shard": np.array(shards, np.int64),
            "rows": np.array(texts, dtype=object),
            "count": np.array(counts, np.int64),
        }


def import_ray(address: str | None):
    """Ray, or a one-line error. Without an address (a private instance on this machine) Ray is
    kept on the loopback interface: set before Ray's first import, as Ray reads it then."""
    if not address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingDependencyError(
            "--engine ray needs Ray, which is not installed (pip install 'svsurgery[ray]')"
        ) from None
    return ray


def _ray(
    spec: AuditSpec, shards: list[Shard], on_shard: OnShard, workers: int | None, address: str | None, notes: list[str]
) -> dict:
    ray = import_ray(address)
    started = False
    if not ray.is_initialized():
        options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=workers or available_cpus(), _node_ip_address="127.0.0.1", **options)
        started = True
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = max(1, min(workers or cpus, max(len(shards), 1)))
        if shards:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            context.print_on_execution_start = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            by_index = {shard.index: shard for shard in shards}
            items = [
                {"shard": s.index, "entries": json.dumps([dataclasses.asdict(e) for e in s.entries])} for s in shards
            ]
            dataset = ray.data.from_items(items, override_num_blocks=len(items))
            results = dataset.map_batches(
                RayShardWorker,
                fn_constructor_args=(spec,),
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=1,
            )
            for row in results.iter_rows():
                on_shard(by_index[int(row["shard"])], str(row["rows"]), int(row["count"]))
        return {
            "engine": "ray",
            "workers": workers,
            "ray_address": address or ("this process's Ray" if not started else "local"),
        }
    finally:
        if started:
            ray.shutdown()

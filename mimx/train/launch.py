"""The part of every ``pretrain`` action that does not depend on the modality."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf
from torch import nn

from mimx.config import UserError, to_plain
from mimx.data.stream import ShardStream, StreamLoader
from mimx.train.checkpoint import seed_everything
from mimx.train.distributed import DistInfo, gather_objects, init_distributed, shutdown
from mimx.train.engine import Task, TrainConfig, Trainer, TrainResult

# (dist) -> (model, stream, samples per epoch, task); called after the seeds are set
Build = Callable[[DistInfo], tuple[nn.Module, ShardStream, int, Task]]


def run_pretraining(cfg: DictConfig, train: TrainConfig, build: Build, *, num_workers: int,
                    prefetch: int) -> TrainResult:
    """Start the processes' group, build the modality's parts, write the run folder and train (or resume)."""
    dist = init_distributed(train.device)
    lock = None
    try:
        run_dir = Path(cfg.run.dir)
        busy = ""
        if dist.is_main:
            try:
                lock = lock_run(run_dir)
            except UserError as exc:
                busy = str(exc)
        busy = gather_objects(busy)[0]  # the main process's verdict, on every rank
        if busy:
            raise UserError(busy)
        seed_everything(train.seed)
        model, stream, samples, task = build(dist)
        loader = StreamLoader(stream, num_workers=num_workers, pin_memory=dist.device.type == "cuda",
                              prefetch_factor=prefetch, timeout=train.data_timeout)
        plain: dict[str, Any] = to_plain(cfg)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(plain))
            name = getattr(getattr(model, "config", None), "name", type(model).__name__)
            print(f"[mimx] {len(getattr(stream, 'urls', []))} source(s), {samples} samples per epoch, model {name}: "
                  f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters", file=sys.stderr)
        return Trainer(train, model, loader, task, run_dir, samples, dist, config=plain).fit()
    finally:
        if lock is not None:
            lock.close()  # releases the lock
        shutdown()


class RunLock:
    """The open ``.lock`` file of a run folder; :meth:`close` releases the lock.

    A process forked while the lock is held (a data-loader worker) lets go of its copy at once, so a worker
    that outlives a killed training cannot keep the folder locked."""

    _held: ClassVar[set[RunLock]] = set()

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec (PEP 446)
        RunLock._held.add(self)

    def owner(self) -> str:
        os.lseek(self.fd, 0, os.SEEK_SET)
        return os.read(self.fd, 4096).decode(errors="replace").strip()

    def write_owner(self) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def close(self) -> None:
        RunLock._held.discard(self)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @classmethod
    def _drop_in_child(cls) -> None:
        for lock in list(cls._held):  # the parent's lock stays: only this process's reference goes
            lock.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=RunLock._drop_in_child)


def lock_run(run_dir: Path) -> RunLock:
    """An exclusive lock on ``run_dir`` for this process's lifetime: a second run in the same folder would
    resume from the same checkpoint and overwrite the first one's, so it stops with a message instead."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir / ".lock")
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        return lock
    try:
        fcntl.flock(lock.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = lock.owner() or "another process"
        lock.close()
        raise UserError(f"{run_dir} is in use by a running training ({owner}); wait for it, stop it, or give "
                        "this run another run.dir") from None
    except OSError as exc:  # a file system without flock (some network and FUSE mounts): run unlocked
        print(f"[mimx] warning: {run_dir} cannot be locked ({exc.strerror or exc}); do not start a second run in "
              "it while this one trains", file=sys.stderr)
        return lock
    lock.write_owner()
    return lock

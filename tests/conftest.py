"""Shared fixtures: run tiny models on one CPU thread.

Tiny tensors gain nothing from threads, and on a shared 2-core CPU OpenMP spin-waits cost a lot
(measured: the reference loop on 8^3 inputs ran 10x slower with 2 threads on a busy machine).
Test modules opt in with `pytestmark = pytest.mark.usefixtures(...)`.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def one_torch_thread():
    """torch in this process uses one intra-op thread for the test (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_omp_thread(monkeypatch):
    """cryoal commands started by the test take one thread (`use_all_cpu_cores` honours it)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def one_train_thread(monkeypatch):
    """`cryoal.learn.train` uses one thread instead of every core (restored afterwards)."""
    import torch

    import cryoal.learn.train

    threads = torch.get_num_threads()
    monkeypatch.setattr(cryoal.learn.train, "use_all_cpu_cores", lambda: (torch.set_num_threads(1), 1)[1])
    yield
    torch.set_num_threads(threads)

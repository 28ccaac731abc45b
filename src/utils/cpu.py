"""How many CPU threads local models compute with (llama.cpp and torch alike).

Both runtimes split every layer of every token across their threads with OpenMP and make the threads wait for one
another several hundred times per token. That is fastest on an idle machine, and falls off a cliff as soon as another
busy process takes one of those cores: a waiting thread spins until the descheduled one gets a core back. Measured on
this 2-core CPU with the embedded model (``benchmarks/cpu_contention.py``), decode speed in tokens/s:

=========================================  ====  =================  ============================
threads (OpenMP wait policy)               idle  one busy process   one busy process at nice -8
=========================================  ====  =================  ============================
llama.cpp, 2 (default: spin, then sleep)   118   35                 0.4
llama.cpp, 2 (PASSIVE: sleep at once)      42    59                 63
llama.cpp, 1                               80    74                 73
torch lean decoder, 2 (default)            61    18                 0.8
torch lean decoder, 2 (PASSIVE)            28    34                 32
torch lean decoder, 1                      38    34                 38
=========================================  ====  =================  ============================

The GUI always has such a neighbour: its renderer (a Flutter window, or a browser with software rendering, whose
GPU process raises its own priority) redraws while a reply streams, and in the end-to-end tests that drove a run of
the agent company from ~15 s to over 240 s (a flaky CI failure). The GUI used to set PASSIVE, which avoids the cliff
but halves the speed of two threads even when idle; one thread fewer than the cores (``leave_a_core_for_the_ui``)
is faster in every column and never collapses. Command-line chat, the API server and the benchmarks keep every core.
``HEARTH_THREADS`` overrides both.
"""

from __future__ import annotations

import os

from src.settings import ENV_THREADS, get_settings, reload_settings


def available_cpus() -> int:
    """The CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def compute_threads() -> int:
    """Threads for model computation: ``HEARTH_THREADS`` when set, else every available core."""
    return get_settings().threads or available_cpus()


def leave_a_core_for_the_ui() -> int:
    """Make the automatic thread count one less than the cores (at least 1) for this process, unless the user set
    ``HEARTH_THREADS``; returns the count now in force. Called by the GUI before any model loads."""
    os.environ.setdefault(ENV_THREADS, str(max(1, available_cpus() - 1)))
    reload_settings()
    return compute_threads()


def use_compute_threads_in_torch() -> int:
    """Give torch's CPU thread pool ``compute_threads()`` threads (process-wide); returns the count."""
    import torch

    threads = compute_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads

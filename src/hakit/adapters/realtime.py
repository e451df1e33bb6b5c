"""Protect a latency-critical process from a loaded machine: real-time scheduling, locked memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

MCL_CURRENT = 1
MCL_FUTURE = 2
RT_PRIORITY = 10  # above normal tasks, below kernel threads and watchdogs


def make_realtime() -> str:
    """Switch the calling process to SCHED_RR and lock its memory; say what worked.

    Never fatal: without privileges the process keeps normal scheduling and says so.
    """
    done = []
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(RT_PRIORITY))
        done.append(f"SCHED_RR priority {RT_PRIORITY}")
    except (OSError, AttributeError) as e:
        done.append(f"normal scheduling (SCHED_RR refused: {e})")
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if libc.mlockall(MCL_CURRENT | MCL_FUTURE) == 0:
            done.append("memory locked")
        else:
            done.append(f"memory not locked ({os.strerror(ctypes.get_errno())})")
    return ", ".join(done)

"""Fixed glibc malloc thresholds for the benchmark's timing processes.

glibc serves large blocks with fresh ``mmap``\\ s (every page faults on first touch)
until a block that size has been freed: it then raises its mmap threshold to that
size, and trims the heap back past its trim threshold. So in one process each
side's page faults depend on what the other side allocated and freed last. On the
circular layer (float32 forward+backward, interleaved with fastconvt) torch's
composite took 3,970 page faults per step with glibc's defaults, and 11 with these
fixed thresholds; fastconvt 447 and 0. Fixed thresholds time both sides in the
steady state of a long-running process, whatever ran before them.
"""
import os
import platform
import sys

TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


def environment(env=None):
    """``env`` (default ``os.environ``) with the fixed thresholds, unless it sets
    ``GLIBC_TUNABLES`` itself."""
    env = dict(os.environ if env is None else env)
    env.setdefault("GLIBC_TUNABLES", TUNABLES)
    return env


def setting():
    """What this process runs with: its ``GLIBC_TUNABLES``, or glibc's defaults."""
    return os.environ.get("GLIBC_TUNABLES") or "glibc defaults (dynamic thresholds)"


def reexec_with_fixed_thresholds():
    """Restart this Python command with the fixed thresholds (glibc reads them only at
    start-up), unless ``GLIBC_TUNABLES`` is set or the C library is not glibc."""
    if "GLIBC_TUNABLES" in os.environ or platform.libc_ver()[0] != "glibc":
        return
    sys.stdout.flush()
    os.execve(sys.executable, sys.orig_argv, environment())

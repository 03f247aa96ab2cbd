"""The converter's own memory: giving freed heap back to the system.

A large model's conversion steps (int8 quantization, each explainer signature) each take
gigabytes that TensorFlow frees but glibc's allocator keeps mapped; handing those pages
back between steps keeps the process's resident size at one step's, not their sum.
"""

from __future__ import annotations

import ctypes
import gc

GiB = 2 ** 30


def release_freed_memory() -> None:
    """Collect garbage and return the heap's free pages to the system (glibc ``malloc_trim``; elsewhere a no-op)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


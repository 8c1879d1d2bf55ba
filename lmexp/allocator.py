"""Host memory freed during a training step, kept for the next step (``trainer.keep_freed_memory``).

glibc's malloc hands large freed blocks back to the kernel: a block over its mmap threshold
(128 KiB at first, raised by glibc up to 32 MiB as such blocks are freed) is unmapped when it
is freed, and free memory at the top of the heap beyond its trim threshold is returned. A
training step allocates and frees the same tens of MB every step (activations, gradients, the
fused loss's chunks), so each step faults that memory in again, a 4 KiB page at a time, every
page zeroed by the kernel first: word_lm_example took 300,000 page faults in 45 steps here, and
trained 9% faster without them (benchmarks/fast_paths.py). Fixed thresholds keep the memory in
the process for reuse; a block over 32 MiB is still mapped afresh. 32 MiB is the ceiling of
glibc's own dynamic threshold and the most that older glibc's mallopt takes; this machine's
glibc 2.36 takes more (a 64 MiB threshold kept a 48 MiB block on the heap), which nothing here
has measured the worth of.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {
    M_MMAP_THRESHOLD: 32 << 20,  # the largest any 64-bit glibc accepts (see above)
    M_TRIM_THRESHOLD: 1 << 30,  # free memory at the heap's top kept up to 1 GiB: in practice, all of it
    M_TOP_PAD: 64 << 20,  # the heap grows 64 MiB at a time (address space; pages count once written)
}


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory in the process. Affects the whole process, from
    here on. False where the C library has no glibc ``mallopt`` (macOS, Windows; musl's ignores it)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([mallopt(parameter, value) == 1 for parameter, value in SETTINGS.items()])

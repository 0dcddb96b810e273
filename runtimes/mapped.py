"""Model files read through a memory mapping vlmedge owns, whose pages a load hands back.

OpenVINO's CPU plugin reads an IR's weights (or a cached blob) from a memory mapping and
packs the large ones into its own layout, in anonymous memory, while compiling and at the
first call. Every mapped page it read stays counted in the process's RSS for as long as the
mapping lives, which is as long as the compiled model: a 346 MB fp32 ViT-B/16 held 2.1x its
file after its first call, half of it pages it would never read again.

So the backend reads the file through a `MappedFile`, and while a load and its first call
run, a thread hands the mapping's resident pages back every few milliseconds (madvise
MADV_DONTNEED). The mapping is read-only and shared: handing a page back only unmaps it from
this process; it stays in the page cache, and the next read of it faults the file's own bytes
back in. vlmedge owns the mapping, and every array over it (which the backend's tensors hold)
keeps it open, so nothing else can be at those addresses while the thread runs. Where madvise
is missing (Windows) nothing is handed back.
"""

from __future__ import annotations

import mmap
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

_DONTNEED = getattr(mmap, "MADV_DONTNEED", None) if hasattr(mmap.mmap, "madvise") else None
# Often enough that a load's working set of mapped pages stays at a few MB: packing reads
# a few hundred MB a second on these CPUs.
HAND_BACK_EVERY_S = 0.005


class MappedFile:
    """A whole file mapped read-only and shared."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        # An exported buffer: the mapping cannot be closed while this array lives.
        self._pages = np.frombuffer(self._map, dtype=np.uint8)

    def head(self, count: int) -> bytes:
        return self._pages[:count].tobytes()

    def array(self, offset: int = 0) -> np.ndarray:
        """The bytes from `offset` as a uint8 array without a copy, which keeps this mapping
        open for as long as it (or a backend's tensor holding it) lives. It is flagged writable
        because OpenVINO's zero-copy Tensor asks for that; the pages themselves are mapped
        read-only, so a write would fault, never alter the file or what a reader sees."""
        view = self._pages[offset:]
        return np.asarray(_Bytes(self, view.ctypes.data, view.size))

    def hand_back_pages(self) -> None:
        """Unmaps the resident pages from this process (they stay in the page cache)."""
        if _DONTNEED is not None:
            self._map.madvise(_DONTNEED)

    @contextmanager
    def handing_back_pages(self) -> Iterator[None]:
        """Hands the resident pages back every HAND_BACK_EVERY_S while the block runs, and
        once more after it."""
        if _DONTNEED is None:
            yield
            return
        done = threading.Event()

        def loop() -> None:
            while not done.wait(HAND_BACK_EVERY_S):
                self.hand_back_pages()

        thread = threading.Thread(target=loop, name="vlmedge-hand-back-pages", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            self.hand_back_pages()


class _Bytes:
    """numpy's array interface over `size` mapped bytes at `address`; the array's base, so
    the mapping it refers to stays open under it."""

    def __init__(self, owner: MappedFile, address: int, size: int) -> None:
        self.owner = owner
        self.__array_interface__ = {"data": (address, False), "shape": (size,), "typestr": "|u1", "version": 3}

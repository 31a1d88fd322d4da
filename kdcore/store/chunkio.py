"""How a store's bytes come off the disk: per-array block readers and the training loader's block cache.

`ArrayReader` reads one array's blocks: straight from its chunk files where the layout is one this
module knows (the Zarr v3 spec's chunk keys, `bytes` and `zstd` codecs), through zarr otherwise or
when KD_STORE_READS=zarr. `StoreRows` gives the training loader the rows of a batch, from whole
blocks read ahead into a `BlockCache` or, for a block not read yet, row by row. Nothing here knows
what the arrays mean or checks their content: the `Store` whose reads they call verifies each
against the block's commit record. Why each trick is here, with measurements: DESIGN.md, "Store".
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Callable

import numpy as np

READS_SETTING = "KD_STORE_READS"  # "direct" (the default) or "zarr": every read through zarr's reader


def direct_reads() -> bool:
    return os.environ.get(READS_SETTING, "direct") != "zarr"


class ChunkError(Exception):
    """A chunk file that is missing, of the wrong size, or does not decode (the message says which)."""


class ArrayReader:
    """Block b (rows b*B .. b*B+B) of one array; `read_rows` for arrays stored raw."""

    def __init__(self, folder: Path, block_rows: int, zarr_array: Callable):
        self.zarr_array = zarr_array  # opened on first use: a direct reader may never need it
        self.files = ChunkFiles.of(folder, block_rows) if direct_reads() else None

    def read(self, b: int, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi (block b), as a writable array; ChunkError where the chunk cannot be read."""
        if self.files is not None:
            return self.files.read(b, hi - lo)
        try:
            return np.asarray(self.zarr_array()[lo:hi])
        except Exception as e:  # zarr's own words for a truncated or undecodable chunk
            raise ChunkError(f"{type(e).__name__}: {e}") from None

    @property
    def rows_readable(self) -> bool:
        """Whether single rows can be read without the rest of their block (a raw chunk file)."""
        return self.files is not None and self.files.raw

    def read_rows(self, b: int, local: np.ndarray, out: np.ndarray) -> None:
        """Rows `local` (sorted, counted from the block's start) of block b into `out`."""
        self.files.read_rows(b, local, out)

    def prefetch(self, b: int) -> None:
        """Ask the OS to start reading block b's chunk file into its page cache (posix_fadvise
        WILLNEED). Only a hint; skipped for chunks read by direct I/O, which bypasses that cache."""
        if self.files is None or self.files.direct or not hasattr(os, "posix_fadvise"):
            return
        try:
            fd = os.open(self.files.path(b), os.O_RDONLY)
        except OSError:  # gone: the read will say so
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


class ChunkFiles:
    """An array's chunk files, for the one layout a store writes: a regular grid whose chunk is a
    whole block (`block_rows` rows, every other dimension whole), codecs `bytes` (little-endian) or
    `bytes` + `zstd`, the default chunk key encoding. `of` returns None for any other metadata."""

    def __init__(self, folder: Path, key: str, dtype: np.dtype, chunk: tuple, zstd: bool):
        self.folder, self.key, self.dtype, self.chunk = folder, key, dtype, chunk
        self.decompress = None
        if zstd:
            from numcodecs.zstd import Zstd  # zarr's own zstd codec

            self.decompress = Zstd().decode
        self.nbytes = int(np.prod(chunk, dtype=np.int64)) * dtype.itemsize
        self.direct = self.raw and _takes_direct_io(folder / "zarr.json")  # not on tmpfs, for one

    @property
    def raw(self) -> bool:
        """Stored without compression: each row is one contiguous run of the file's bytes."""
        return self.decompress is None

    @classmethod
    def of(cls, folder: Path, block_rows: int) -> "ChunkFiles | None":
        try:
            meta = json.loads((folder / "zarr.json").read_text())
            shape, dtype = tuple(meta["shape"]), np.dtype(meta["data_type"])
            chunk = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
            keys, codecs = meta["chunk_key_encoding"], [c["name"] for c in meta["codecs"]]
            endian = meta["codecs"][0].get("configuration", {}).get("endian", "little")
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None
        separator = keys.get("configuration", {}).get("separator", "/")
        if (meta.get("zarr_format") != 3 or meta["chunk_grid"].get("name") != "regular"
                or chunk != (block_rows, *shape[1:]) or keys.get("name") != "default"
                or separator not in ("/", ".") or codecs not in (["bytes"], ["bytes", "zstd"])
                or endian != "little" or meta.get("storage_transformers") or dtype.kind not in "fiub"):
            return None
        key = separator.join(["c", "{}", *["0"] * (len(shape) - 1)])
        return cls(folder, key, dtype.newbyteorder("<"), chunk, codecs[-1] == "zstd")

    def path(self, b: int) -> Path:
        return self.folder / self.key.format(b)

    def read(self, b: int, rows: int) -> np.ndarray:
        try:
            if self.decompress is None:
                out = self._read_raw(b).view(self.dtype).reshape(self.chunk)
            else:
                with open(self.path(b), "rb", buffering=0) as f:
                    data = np.frombuffer(self._decode(f.read()), np.uint8)
                if data.nbytes != self.nbytes:
                    raise ChunkError(f"chunk decodes to {data.nbytes} bytes, expected {self.nbytes}")
                out = data.view(self.dtype).reshape(self.chunk).copy()
        except FileNotFoundError:
            raise ChunkError("chunk file missing") from None
        return out[:rows]

    def _decode(self, data: bytes) -> bytes:
        try:
            return self.decompress(data)
        except Exception as e:
            raise ChunkError(f"chunk does not decode ({type(e).__name__}: {e})") from None

    def _read_raw(self, b: int) -> np.ndarray:
        """A raw chunk's bytes: copied from the page cache if they are all there, else read by
        direct I/O (a fraction of the CPU of the OS's read-ahead plus its copy)."""
        buf = _aligned_buffer(self.nbytes)
        with open(self.path(b), "rb", buffering=0) as f:
            self._check_size(os.fstat(f.fileno()).st_size)
            got = None
            if self.direct and not in_page_cache(f.fileno(), self.nbytes):
                got = self._read_direct(b, buf)
            if got is None:
                got = f.readinto(memoryview(buf)[: self.nbytes])
        if got != self.nbytes:
            raise ChunkError(f"short read: {got} of {self.nbytes} bytes")
        return buf[: self.nbytes]

    def _check_size(self, size: int) -> None:
        if size != self.nbytes:
            raise ChunkError(f"chunk file is {size} bytes, expected {self.nbytes}")

    def _read_direct(self, b: int, buf: np.ndarray) -> int | None:
        """Bytes read with O_DIRECT into `buf` (page-aligned, a whole number of pages long); None,
        and no direct I/O from then on, where the file system refuses it."""
        try:
            fd = os.open(self.path(b), os.O_RDONLY | os.O_DIRECT)
        except FileNotFoundError:
            raise
        except OSError:
            self.direct = False
            return None
        try:
            return os.preadv(fd, [memoryview(buf)], 0)
        except OSError:
            self.direct = False
            return None
        finally:
            os.close(fd)

    def read_rows(self, b: int, local: np.ndarray, out: np.ndarray) -> None:
        """Rows `local` of raw block b into `out` (C-contiguous, this dtype), one pread per run of
        adjacent rows, through the page cache."""
        row = self.nbytes // self.chunk[0]
        try:
            fd = os.open(self.path(b), os.O_RDONLY)
        except FileNotFoundError:
            raise ChunkError("chunk file missing") from None
        try:
            self._check_size(os.fstat(fd).st_size)
            dest = memoryview(out.reshape(-1).view(np.uint8))
            i, n = 0, len(local)
            while i < n:
                j = i + 1
                while j < n and local[j] == local[j - 1] + 1:
                    j += 1
                got = os.preadv(fd, [dest[i * row : j * row]], int(local[i]) * row)
                if got != (j - i) * row:
                    raise ChunkError(f"short read: {got} of {(j - i) * row} bytes")
                i = j
        finally:
            os.close(fd)


class StoreRows:
    """Rows of a store's arrays for the training loader. Blocks are read whole into a cache, in two
    parts: the arrays whose rows can be read alone (raw, vocab-sized) and the rest. `warm`, called
    ahead by the loader's I/O thread, fills it; `gather`, in another thread, copies rows from it,
    and reads a raw array's rows straight from the file for a block whose read has not finished
    (an epoch's first batches span a shuffle group's blocks, where their own rows are a fraction).
    The store checks everything read against its commit records."""

    def __init__(self, store, names: list[str], cache_blocks: int, empty: Callable = np.empty):
        self.store, self.names, self.empty = store, names, empty
        self.cache = BlockCache(2 * cache_blocks)
        self._hinted: set[int] = set()

    def _block(self, b: int, raw: bool, wait: bool = True) -> dict | None:
        names = [n for n in self.names if self.store.rows_readable(n) == raw]
        return self.cache.get((b, raw), lambda: self.store.read_block(b, names), wait)

    def warm(self, blocks: list[int]) -> None:
        """Read these blocks into the cache: first the small arrays of each, then the raw ones
        (a batch being built meanwhile waits only for the small ones)."""
        for raw in (False, True):
            for b in blocks:
                self._block(b, raw)

    def hint(self, blocks: list[int]) -> None:
        """Ask the OS to start reading these blocks (`Store.prefetch`), once each."""
        for b in blocks:
            if b not in self._hinted:  # a group's batches share its blocks
                self._hinted.add(b)
                self.store.prefetch(b, self.names)

    def gather(self, rows: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays at sorted global `rows`, in that order: each block's rows are copied once,
        straight into the result, from the cache or (raw arrays of a block not read yet) the file."""
        layout = self.store.layout
        block_rows, arrays = layout.block_rows, layout.arrays()
        blocks = rows // block_rows
        out = {n: self.empty((len(rows), *arrays[n][0][1:]), np.dtype(arrays[n][2])) for n in names or self.names}
        start = 0
        for b in np.unique(blocks).tolist():
            local = rows[blocks == b] - b * block_rows
            for n, batch in out.items():
                dest = batch[start : start + len(local)]
                raw = self.store.rows_readable(n)
                block = self._block(b, raw, wait=not raw)
                if block is None:
                    self.store.read_rows(n, b, local, dest)
                    continue
                np.take(block[n], local, axis=0, out=dest, mode="clip")  # one copy: numpy buffers `out` otherwise
            start += len(local)
        return out


class BlockCache:
    """Whole blocks for the training loader, keyed by (block, part), read once by whichever thread
    asks first (another asking meanwhile waits for that read), least recently used dropped first."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def keys(self) -> list:
        with self._lock:
            return list(self._entries)

    def get(self, key, read: Callable[[], dict], wait: bool = True) -> dict | None:
        """The cached value of `key`, reading it with `read()` if no thread has started to. With
        wait=False, None unless a read has finished."""
        mine = False
        with self._lock:
            pending = self._entries.get(key)
            if pending is not None:
                self._entries.move_to_end(key)
            elif not wait:
                return None
            else:
                pending, mine = Future(), True
                self._entries[key] = pending
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
        if not wait and not pending.done():
            return None
        if mine:
            try:
                pending.set_result(read())
            except BaseException as e:
                pending.set_exception(e)
                with self._lock:  # a failed read is not cached: the next asker tries again
                    if self._entries.get(key) is pending:
                        del self._entries[key]
                raise
        return pending.result()


def _takes_direct_io(path: Path) -> bool:
    if not hasattr(os, "O_DIRECT") or _libc() is None:
        return False
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        return False
    return True


def drop_from_page_cache(path: Path) -> None:
    """Drop a directory's files from the OS's page cache (posix_fadvise DONTNEED), so the next read
    comes from the disk: for benchmarks and tests of cold reads. Only these files: dropping the whole
    cache also evicts torch's own libraries, whose re-reading lands in whatever runs next."""
    os.sync()
    for f in Path(path).rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


_LIBC = False


def _libc():
    """libc's mmap/mincore/munmap through ctypes (Linux), or None."""
    global _LIBC
    if _LIBC is False:
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [
                ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
            libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
            _LIBC = libc if sys.platform.startswith("linux") else None
        except (OSError, AttributeError):
            _LIBC = None
    return _LIBC


def in_page_cache(fd: int, nbytes: int) -> bool:
    """Whether the file's first, middle and last pages are in the page cache (a file read whole is
    there whole, and one evicted, gone whole): mincore on a mapping that is never touched."""
    import ctypes
    import mmap

    libc = _libc()
    addr = libc.mmap(None, nbytes, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr in (None, -1, 2**64 - 1):
        return False
    try:
        vec = ctypes.create_string_buffer(1)
        last = (nbytes - 1) // mmap.PAGESIZE
        for page in {0, last // 2, last}:
            if libc.mincore(addr + page * mmap.PAGESIZE, 1, vec) != 0 or not vec.raw[0] & 1:
                return False
        return True
    finally:
        libc.munmap(addr, nbytes)



def _aligned_buffer(nbytes: int) -> np.ndarray:
    """Writable memory starting on a page boundary, a whole number of pages long: direct I/O asks
    for it, and the kernel copies a cached page into it several times faster than 16 bytes past."""
    size = -(-nbytes // 4096) * 4096
    raw = np.empty(size + 4096, np.uint8)
    start = (-raw.ctypes.data) % 4096
    return raw[start : start + size]

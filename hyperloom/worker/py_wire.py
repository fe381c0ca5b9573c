"""The pipe between a worker and its Python executor processes (``py_pool``, ``py_child``).

Pipe protocol (both directions): one ``send_bytes`` with a pickled
``(fields, frames)`` tuple, where each data frame below INLINE_FRAME_LIMIT is
inline bytes, each larger one is ``None`` and follows as its own
``send_bytes`` (no extra copy of big buffers on the sending side), and each
one of SHARED_FRAME_BYTES or more is written once into a file of the pool's
directory in shared memory (``/dev/shm``) and travels as ``(path, size,
owned)``: the receiver maps it read-only, so a NumPy array reaches the other
process with at most one memcpy instead of a trip through the pipe in 64 KiB
pieces. A child unlinks what it maps at once. The worker keeps the files of
its children's results for as long as it holds their mapping
(``SharedFiles``), so a result that goes back to a child as another task's
input is not copied at all: the child maps the same file (``owned`` False).
Data objects travel in ``hyperloom.data`` wire form (meta + frames).
    worker -> child: ("run", [((fn_name, task_id, task_type, config, cpu_ids,
                      work_dir, pin, label, input metas), n_frames), ...])
                     or None: exit
    child -> worker: ("log", level, message, index of the task running or -1)
                     ("done", [(index, kind, payload, seconds, n_frames), ...])
                     where kind/payload: "data"/meta | "redirect"/(task_type,
                     config, metas) | "error"/message | "crash"/traceback
"""

from __future__ import annotations

import mmap
import os
import pickle
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from ..data import BytesLike, decode

INLINE_FRAME_LIMIT = 64 * 1024
SHARED_FRAME_BYTES = 1024 * 1024
DIR_PREFIX = "hyperloom-pool-"

class SharedFiles:
    """The worker's side of shared-memory frames: which mappings are files of ours.

    A mapping made by ``receive`` stays registered (by id, with a weak reference)
    until it is garbage collected; its file is unlinked then."""

    def __init__(self, base: str):
        # Made on first use (most pools never see a big frame), named after this
        # process so that one left behind by a killed worker is found and removed.
        remove_stale_dirs(base)
        self.dir = os.path.join(base, f"{DIR_PREFIX}{os.getpid()}-{os.urandom(4).hex()}")
        self._paths: dict = {}   # id(mmap) -> (weakref to it, path)
        self._lock = threading.Lock()

    def path_of(self, frame) -> str | None:
        owner = frame.obj if isinstance(frame, memoryview) else None
        if type(owner) is not mmap.mmap:
            return None
        with self._lock:
            entry = self._paths.get(id(owner))
        return entry[1] if entry is not None and entry[0]() is owner else None

    def keep(self, mapping, path: str) -> None:
        key = id(mapping)

        def forget(_ref):
            with self._lock:
                if self._paths.get(key, (None,))[0] is ref:
                    del self._paths[key]
            try:
                os.unlink(path)
            except OSError:
                pass

        ref = weakref.ref(mapping, forget)
        with self._lock:
            self._paths[key] = (ref, path)


def pack(fields: tuple[Any, ...], frames: Iterable[BytesLike] = (),
         shared: SharedFiles | str | None = None) -> list[BytesLike]:
    """Message parts: the pickled header, then each large frame on its own; the
    biggest ones go through a shared-memory file (``shared``: a SharedFiles in the
    worker, the directory's path in a child)."""
    # Each inline entry: the frame's bytes, (path, nbytes, owned) of a shared-memory
    # file, or None for a frame that follows as its own message part.
    inline: list[bytes | tuple[str, int, bool] | None] = []
    large: list[BytesLike] = []
    for frame in frames:
        nbytes = memoryview(frame).nbytes
        if nbytes < INLINE_FRAME_LIMIT:
            inline.append(frame if type(frame) is bytes else bytes(frame))
        elif shared is not None and nbytes >= SHARED_FRAME_BYTES:
            if isinstance(shared, str):
                inline.append((to_shared_file(shared, frame), nbytes, True))
                continue
            path = shared.path_of(frame)
            inline.append((path, nbytes, False) if path is not None else
                          (to_shared_file(shared.dir, frame), nbytes, True))
        else:
            inline.append(None)
            large.append(frame)
    return [pickle.dumps((fields, inline), pickle.HIGHEST_PROTOCOL)] + large


def remove_stale_dirs(base: str) -> None:
    """Remove the shared-memory directories of pools whose process is gone."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if not name.startswith(DIR_PREFIX):
            continue
        try:
            os.kill(int(name[len(DIR_PREFIX):].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        except (ValueError, OSError):  # not ours, or alive under another user
            pass


def to_shared_file(shm_dir: str, frame) -> str:
    """Write ``frame`` into a new file of ``shm_dir`` (one copy); its path."""
    try:
        fd, path = tempfile.mkstemp(dir=shm_dir)
    except FileNotFoundError:  # the first big frame of this pool
        os.makedirs(shm_dir, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=shm_dir)
    try:
        view = memoryview(frame).cast("B")
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return path


def from_shared_file(path: str, nbytes: int, owned: bool, keep=None) -> memoryview:
    """The frame in ``path``, mapped read-only without a copy. ``keep`` (the worker's
    SharedFiles) keeps the file for as long as the mapping lives; otherwise an
    ``owned`` file is unlinked now (the memory goes with the last view of it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        mapping = mmap.mmap(fd, nbytes, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
        if keep is None and owned:
            os.unlink(path)
    if keep is not None:
        keep.keep(mapping, path)
    return memoryview(mapping)


def send_parts(conn, parts) -> None:
    """Send a message; a dead peer is left for the reader to notice as EOF."""
    try:
        for part in parts:
            conn.send_bytes(part)
    except OSError:
        pass


def receive(conn, keep=None):
    fields, frames = pickle.loads(conn.recv_bytes())
    return fields, [conn.recv_bytes() if frame is None else
                    from_shared_file(*frame, keep) if type(frame) is tuple else frame
                    for frame in frames]


def decode_all(metas, frames) -> list:
    objects, position = [], 0
    for meta in metas:
        obj, position = decode(meta, frames, position)
        objects.append(obj)
    return objects

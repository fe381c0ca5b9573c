"""Data objects (Plain, File, Array, Index, PyObj) and their wire form.

This is the data-object model shared by broker, worker and client. A data
object is immutable; each has a type ``symbol``, a ``size`` (approximate
bytes) and a ``length`` (number of inner pieces, 0 when it has none).
"D-objects" (Plain and File) expose their content as one contiguous buffer
through ``raw()``.

Wire form: ``encode(obj)`` returns ``(meta, frames)`` where ``meta`` is a small
msgpack-able value and ``frames`` is a list of buffers sent as separate
ZeroMQ frames (zero-copy for large ones). ``decode(meta, frames)`` rebuilds
the object. The broker never calls ``decode``: it forwards metas and frames
without looking inside, so it never unpickles user data.

Meta forms (first element is the kind code):
    [0]                    Plain, 1 frame: the bytes
    [1, path, size]        File, no frame: only the path travels (shared FS)
    [2, [item metas]]      Array, the items' frames concatenated in order
    [3, base_meta]         Index, 1 frame of little-endian u64 offsets, then the base's frames
    [4, size]              PyObj, 1 frame: cloudpickle bytes (protocol 5, no buffer out of band)
    [4, size, n]           PyObj, 1 + n frames: the pickle, then its n out-of-band buffers
                           (pickle protocol 5: NumPy arrays, bytes-like objects of at least
                           OUT_OF_BAND_BYTES travel as their own zero-copy frames)
    [5, bytes]             Plain of at most SMALL_BYTES, carried in the meta itself
                           (a frame per tiny object would cost more than the object)
    [6, symbol, payload]   an extension data type (ExtensionData), its frames after;
                           decoded only where that type is registered (its workers)
"""

from __future__ import annotations

import mmap
import os
import sys
from array import array
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from .errors import LoomError

if TYPE_CHECKING:
    import pickle

    import zmq

# The content of a D-object: what ``raw()`` returns (File: an mmap of the file).
BytesLike: TypeAlias = "bytes | bytearray | memoryview"
RawBuffer: TypeAlias = "bytes | bytearray | memoryview | mmap.mmap"
# One ZeroMQ frame as encode produces and decode accepts it.
WireFrame: TypeAlias = "bytes | bytearray | memoryview | zmq.Frame"

PLAIN_SYMBOL = "loom/data"
FILE_SYMBOL = "loom/file"
ARRAY_SYMBOL = "loom/array"
INDEX_SYMBOL = "loom/index"
PYOBJ_SYMBOL = "loom/pyobj"

KIND_PLAIN, KIND_FILE, KIND_ARRAY, KIND_INDEX, KIND_PYOBJ, KIND_SMALL, KIND_EXTENSION = range(7)
SMALL_BYTES = 1024
# Buffers this big leave the pickle stream and travel as frames of their own; smaller
# ones cost less inline than a frame.
OUT_OF_BAND_BYTES = 64 * 1024


class DataError(LoomError):
    """An operation that the data object does not support (the task fails)."""


class DataObject:
    """Base of all data objects."""

    __slots__ = ()
    symbol = ""

    @property
    def size(self) -> int:
        raise NotImplementedError

    @property
    def length(self) -> int:
        return 0

    def raw(self) -> RawBuffer | None:
        """Contiguous content of a D-object, or None for other objects."""
        return None

    def info(self) -> str:
        return type(self).__name__

    def get(self, index: int) -> DataObject:
        raise DataError(
            f"loom/data/get on {self.info()}: index {index} is out of range (length={self.length})")

    def slice(self, start: int, end: int) -> DataObject:
        raise DataError(f"loom/base/slice on {self.info()}: object has no inner pieces to slice")

    def to_python(self) -> Any:
        """The value a client gets from ``fetch``."""
        raise NotImplementedError


class Plain(DataObject):
    """An anonymous sequence of bytes."""

    __slots__ = ("data",)
    symbol = PLAIN_SYMBOL

    def __init__(self, data: BytesLike = b"") -> None:
        self.data = data

    @property
    def size(self) -> int:
        return len(self.data)

    def raw(self) -> BytesLike:
        return self.data

    def info(self) -> str:
        return "RawData"

    def to_python(self) -> bytes:
        data = self.data
        return data if type(data) is bytes else bytes(data)

    def __repr__(self) -> str:
        return f"<Plain {bytes(self.data[:40])!r}{'...' if len(self.data) > 40 else ''}>"


class File(DataObject):
    """A handle to a file on a shared file system: only the path travels."""

    __slots__ = ("path", "_size")
    symbol = FILE_SYMBOL

    def __init__(self, path: str, size: int | None = None) -> None:
        self.path = path
        self._size = os.path.getsize(path) if size is None else size

    @property
    def size(self) -> int:
        return self._size

    def raw(self) -> bytes | mmap.mmap:
        if self._size == 0:
            return b""
        with open(self.path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def info(self) -> str:
        return f"<ExternFile '{self.path}'>"

    def to_python(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def __repr__(self) -> str:
        return f"<File {self.path!r}>"


class Array(DataObject):
    """A sequence of arbitrary data objects."""

    __slots__ = ("items", "_size")
    symbol = ARRAY_SYMBOL

    def __init__(self, items: Iterable[DataObject]) -> None:
        self.items = tuple(items)
        self._size: int | None = None

    @property
    def size(self) -> int:
        if self._size is None:
            self._size = sum(item.size for item in self.items)
        return self._size

    @property
    def length(self) -> int:
        return len(self.items)

    def get(self, index: int) -> DataObject:
        if not 0 <= index < len(self.items):
            return super().get(index)
        return self.items[index]

    def slice(self, start: int, end: int) -> DataObject:
        return Array(self.items[start:end])

    def to_python(self) -> list[Any]:
        return [item.to_python() for item in self.items]

    def __repr__(self) -> str:
        return f"<Array length={len(self.items)}>"


class Index(DataObject):
    """A view over a D-object cut at ``offsets`` (length + 1 positions)."""

    __slots__ = ("base", "offsets")
    symbol = INDEX_SYMBOL

    def __init__(self, base: DataObject, offsets: array[int] | Iterable[int]) -> None:
        self.base = base
        self.offsets = offsets if isinstance(offsets, array) else array("Q", offsets)

    @property
    def size(self) -> int:
        return self.base.size + 8 * len(self.offsets)

    @property
    def length(self) -> int:
        return len(self.offsets) - 1

    def _bytes(self, start: int, end: int) -> bytes:
        raw = self.base.raw()
        if raw is None:
            raise DataError(f"Index over {self.base.info()}: its base is not a D-object "
                            f"(plain data or a file)")
        return bytes(memoryview(raw)[self.offsets[start]:self.offsets[end]])

    def get(self, index: int) -> DataObject:
        if not 0 <= index < self.length:
            return super().get(index)
        return Plain(self._bytes(index, index + 1))

    def slice(self, start: int, end: int) -> DataObject:
        if start >= end:
            return Plain(b"")
        return Plain(self._bytes(start, end))

    def to_python(self) -> list[bytes]:
        return [self._bytes(i, i + 1) for i in range(self.length)]

    def __repr__(self) -> str:
        return f"<Index length={self.length}>"


class PyObj(DataObject):
    """An arbitrary Python object; pickled lazily, only when it travels.

    Pickled with protocol 5: large buffers inside the object (NumPy arrays,
    bytes) stay out of the pickle stream (``buffers``), so they travel as
    zero-copy frames and are unpickled in place, without a copy. An object
    decoded from frames keeps its pickle and buffers, so passing it on does
    not pickle it again.
    """

    __slots__ = ("obj", "_size", "_pickled", "_buffers")
    symbol = PYOBJ_SYMBOL

    def __init__(self, obj: Any, size: int | None = None, pickled: bytes | None = None,
                 buffers: Iterable[memoryview] = ()) -> None:
        self.obj = obj
        self._pickled = pickled
        self._buffers = list(buffers)
        if size is None:
            size = _size_of(obj)
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def info(self) -> str:
        return "PyObj"

    def pickled(self) -> bytes:
        """The pickle stream (without the out-of-band buffers: see ``buffers``)."""
        if self._pickled is None:
            self._pickled, self._buffers = dumps(self.obj)
        return self._pickled

    def buffers(self) -> list[memoryview]:
        """The out-of-band buffers of ``pickled()`` (memoryviews), in order."""
        self.pickled()
        return self._buffers

    def to_python(self) -> Any:
        return self.obj

    def __repr__(self) -> str:
        return f"<PyObj {self.obj!r:.40}>"


class ExtensionData(DataObject):
    """Base of data object types that extensions define (symbol ``prefix/name``).

    A subclass sets ``symbol`` and implements ``size``, ``length`` (if it has
    inner pieces), ``encode_payload``/``decode_payload`` (how it travels
    between workers: a msgpack-able payload plus raw frames) and
    ``to_python`` (what a client receives: it is sent as a Python object).
    Register it with ``TaskRegistry.register_data_type`` on every worker.
    """

    __slots__ = ()

    def encode_payload(self, frames: list[BytesLike]) -> Any:
        """Return a msgpack-able payload; append any raw buffers to ``frames``."""
        raise NotImplementedError

    @classmethod
    def decode_payload(cls, payload: Any, frames: Sequence[WireFrame],
                       position: int) -> tuple[ExtensionData, int]:
        """Rebuild from ``payload`` and ``frames[position:]``: ``(obj, next position)``."""
        raise NotImplementedError


def for_client(obj: DataObject) -> DataObject:
    """What a client can decode: files are read, extension objects become PyObjs."""
    if isinstance(obj, File):
        return Plain(obj.to_python())
    if isinstance(obj, ExtensionData):
        return PyObj(obj.to_python())
    if isinstance(obj, Array) and any(isinstance(i, (File, ExtensionData, Array))
                                      for i in obj.items):
        return Array([for_client(item) for item in obj.items])
    return obj


def clamp_slice(length: int, start: int, end: int) -> tuple[int, int]:
    """The original's clamping: bounds past the end become the end."""
    return min(start, length), min(end, length)


# ---------------------------------------------------------------- wire form

def encode(obj: DataObject,
           frames: list[BytesLike] | None = None) -> tuple[list[Any], list[BytesLike]]:
    """Return ``(meta, frames)``; appends to ``frames`` when one is given."""
    if frames is None:
        frames = []
    # type(obj) is X rather than isinstance: a subclass of Plain would lose its class
    # on the way; one type() call a branch costs ~20 ns and lets mypy narrow obj.
    if type(obj) is Plain:
        if len(obj.data) <= SMALL_BYTES:
            return [KIND_SMALL, bytes(obj.data)], frames
        frames.append(obj.data)
        return [KIND_PLAIN], frames
    if type(obj) is Array:
        return [KIND_ARRAY, [encode(item, frames)[0] for item in obj.items]], frames
    if type(obj) is PyObj:
        frames.append(obj.pickled())
        buffers = obj.buffers()
        if not buffers:
            return [KIND_PYOBJ, obj.size], frames
        frames.extend(buffers)
        return [KIND_PYOBJ, obj.size, len(buffers)], frames
    if type(obj) is File:
        return [KIND_FILE, obj.path, obj.size], frames
    if type(obj) is Index:
        frames.append(obj.offsets.tobytes())
        return [KIND_INDEX, encode(obj.base, frames)[0]], frames
    if isinstance(obj, ExtensionData):
        return [KIND_EXTENSION, obj.symbol, obj.encode_payload(frames)], frames
    raise DataError(f"cannot encode {obj!r}")


def decode(meta: Any, frames: Sequence[WireFrame], position: int = 0,
           types: dict[str, type[ExtensionData]] | None = None) -> tuple[DataObject, int]:
    """Rebuild an object from ``meta`` and ``frames[position:]``.

    Returns ``(obj, next_position)``. Frames may be bytes, memoryviews or
    zmq.Frame objects (their buffer is used without copying). ``types`` maps
    extension symbols to their ExtensionData classes. Raises DataError on a
    malformed meta or an extension type that is not registered here.
    """
    try:
        kind = meta[0]
        if kind == KIND_SMALL:
            if type(meta[1]) is not bytes:
                raise DataError(f"malformed small data object {meta!r:.60}")
            return Plain(meta[1]), position
        if kind == KIND_PLAIN:
            return Plain(_buffer(frames[position])), position + 1
        if kind == KIND_ARRAY:
            items: list[DataObject] = []
            for item_meta in meta[1]:
                item, position = decode(item_meta, frames, position, types)
                items.append(item)
            return Array(items), position
        if kind == KIND_PYOBJ:
            pickled = bytes(_buffer(frames[position]))
            n = meta[2] if len(meta) > 2 else 0
            buffers = [memoryview(_buffer(frame, copy_small=False))
                       for frame in frames[position + 1:position + 1 + n]]
            if len(buffers) != n:
                raise DataError(f"PyObj with {n} buffers has only {len(buffers)} frames")
            return PyObj(loads(pickled, buffers), meta[1], pickled, buffers), position + 1 + n
        if kind == KIND_FILE:
            return File(meta[1], meta[2]), position
        if kind == KIND_INDEX:
            offsets = array("Q")
            offsets.frombytes(bytes(_buffer(frames[position])))
            base, position = decode(meta[1], frames, position + 1, types)
            return Index(base, offsets), position
        if kind == KIND_EXTENSION:
            cls = (types or {}).get(meta[1])
            if cls is None:
                raise DataError(f"data type '{meta[1]}' is not registered on this worker")
            return cls.decode_payload(meta[2], frames, position)
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"malformed data object {meta!r}: {error}") from error
    raise DataError(f"unknown data object kind in {meta!r}")


def _buffer(frame: WireFrame, copy_small: bool = True) -> BytesLike:
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return frame
    if copy_small and len(frame) < 65536:
        return frame.bytes
    return frame.buffer


def dumps(obj: Any) -> tuple[bytes, list[memoryview]]:
    """``obj`` pickled (cloudpickle, protocol 5): the stream and its out-of-band buffers."""
    import cloudpickle
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: in the stream
            return True
        if raw.nbytes < OUT_OF_BAND_BYTES:
            return True
        buffers.append(raw)
        return False

    return cloudpickle.dumps(obj, protocol=5, buffer_callback=out_of_band), buffers


def loads(pickled: BytesLike, buffers: Iterable[BytesLike] = ()) -> Any:
    """The object of ``dumps``: buffers are used in place (read-only, as data objects are)."""
    import cloudpickle
    return cloudpickle.loads(pickled, buffers=buffers)


def _size_of(obj: Any) -> int:
    """Approximate bytes of ``obj``: its buffer's size for arrays and bytes-likes."""
    nbytes = getattr(obj, "nbytes", None)
    if type(nbytes) is int:
        return nbytes
    try:
        return sys.getsizeof(obj)
    except Exception:  # an object whose __sizeof__ fails still counts
        return 100

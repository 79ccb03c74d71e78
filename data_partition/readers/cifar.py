"""CIFAR-10 and CIFAR-100 from the "python version" pickles.

Layout (as extracted from the official archives):
``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``cifar-100-python/{train, test, meta}``. Each batch is a pickled dict whose
``data`` rows are 3,072 uint8 values (the R, G and B planes of a 32x32 image).

The pickles are parsed, never executed (:func:`parse_pickle`): only the opcodes
such files use are accepted, and arrays are built from their raw bytes with a
plain numeric dtype and an exact size, so a hostile file can neither run code
nor forge pointers nor ask for memory it does not hold. An unreadable batch is
skipped and counted; the other batches are still used.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_partition.modality_data import IMAGE, DatasetSplits, ModalityData
from data_partition.readers.common import LayoutError, Skips, dataset_folder, regular_file, require_samples

IMAGE_SIDE = 32


@dataclass(frozen=True)
class CifarLayout:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    how: str

    @property
    def expected(self) -> str:
        files = ",".join((*self.train_files, self.test_file, self.meta_file))
        if len(self.train_files) == 5:
            files = f"data_batch_1..5,{self.test_file},{self.meta_file}"
        return f"{self.folder}/{{{files}}}"


CIFAR10 = CifarLayout(
    "cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
    "labels", "label_names", "download CIFAR-10 (python version, cifar-10-python.tar.gz) and extract it there",
)
CIFAR100 = CifarLayout(
    "cifar100", "cifar-100-python", ("train",), "test", "meta",
    "fine_labels", "fine_label_names",
    "download CIFAR-100 (python version, cifar-100-python.tar.gz) and extract it there",
)


# --------------------------------------------------------------------------- the pickle parser
# CIFAR's batch files are pickles (Python 2's cPickle, protocol 2; the fixtures are Python 3's
# protocol 2). ``pickle.load`` executes them, and even a restricted unpickler that only allows
# numpy's array-rebuilding globals lets a crafted file forge object pointers (an object array built
# from raw bytes: segfault) or allocate without bound (``_reconstruct(ndarray, (3_000_000_000,), 'b')``).
# So the files are parsed, not loaded: ``pickletools.genops`` walks the opcodes without executing
# anything, and a small stack machine accepts only the opcodes and calls such files contain:
# containers, scalars, strings, and numpy arrays whose data are raw bytes of a fixed numeric
# dtype, exactly shape x itemsize long. Nothing else is ever called.

MAX_FILE_BYTES = 512 * 2**20  # CIFAR-100's train file, the largest, is 158 MB
MAX_ITEMS = 1_000_000  # per list, and on the stack and memo (CIFAR-100 train: 50,000 per list)
MAX_OPCODES = 2_000_000  # CIFAR-100's train file has about 300,000 (three 50,000-item lists)
MAX_REFERENCED = 4 * MAX_ITEMS  # items reachable through every reference of the parsed value, repeats counted
_DTYPES = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8", "b1"})
_DATA_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "EMPTY_DICT", "DICT", "EMPTY_LIST", "LIST", "APPEND", "APPENDS",
    "SETITEM", "SETITEMS", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "FLOAT", "BINFLOAT", "NONE", "NEWTRUE", "NEWFALSE",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
    "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD",
})
_CALLS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct", ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy", "ndarray"): "ndarray", ("numpy", "dtype"): "dtype", ("_codecs", "encode"): "encode",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer", ("numpy._core.numeric", "_frombuffer"): "frombuffer",
}


class PickleRefused(pickle.UnpicklingError):
    """A CIFAR file holding something other than plain data and numeric arrays (one-line message)."""


class _Global:
    def __init__(self, name: str) -> None:
        self.name = name


class _Dtype:
    def __init__(self, base: str) -> None:
        self.dtype = np.dtype(base)


class _Array:
    """An array announced by ``_reconstruct``; BUILD gives it shape, dtype and bytes."""

    array: np.ndarray | None = None


class _Mark:
    pass


def _raw(value) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):  # a Python 2 str, decoded as latin1
        return value.encode("latin1")
    raise PickleRefused(f"array data must be bytes, got {type(value).__name__}")


def _shape(value) -> tuple[int, ...]:
    if not (isinstance(value, tuple) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                             for n in value)):
        raise PickleRefused(f"array shape must be a tuple of ints >= 0, got {value!r}"[:120])
    return value


def _array(raw, dtype, shape, fortran: bool) -> np.ndarray:
    """An array exactly ``shape`` x ``dtype`` over ``raw`` (no copy, no allocation beyond the file's bytes)."""
    if not isinstance(dtype, _Dtype):
        raise PickleRefused("array dtype must be a numpy dtype")
    data, shape = _raw(raw), _shape(shape)
    count = math.prod(shape)
    if len(data) != count * dtype.dtype.itemsize:
        raise PickleRefused(f"array of shape {shape} x {dtype.dtype} needs {count * dtype.dtype.itemsize} bytes, "
                            f"the file holds {len(data)}")
    return np.frombuffer(data, dtype=dtype.dtype, count=count).reshape(shape, order="F" if fortran else "C")


def _call(func: _Global, args) -> object:
    if not isinstance(args, tuple):
        raise PickleRefused("REDUCE arguments must be a tuple")
    if func.name == "reconstruct":  # _reconstruct(ndarray, (0,), b'b'): an empty array BUILD fills in
        if len(args) != 3 or not isinstance(args[0], _Global) or args[0].name != "ndarray" or args[1] != (0,) \
                or args[2] not in ("b", b"b"):
            raise PickleRefused(f"unexpected _reconstruct arguments {args!r}"[:120])
        return _Array()
    if func.name == "dtype":  # dtype('u1', False, True)
        if not args or not isinstance(args[0], str) or args[0] not in _DTYPES or len(args) > 3:
            raise PickleRefused(f"dtype {args[:1]!r} is not a plain numeric dtype"[:120])
        return _Dtype(args[0])
    if func.name == "encode":  # _codecs.encode(str, 'latin1'): Python 3's protocol-2 bytes
        if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
            raise PickleRefused("unexpected _codecs.encode arguments")
        return args[0].encode("latin1")
    if func.name == "frombuffer":  # _frombuffer(buffer, dtype, shape, order): protocol 5 arrays
        if len(args) != 4 or args[3] not in ("C", "F"):
            raise PickleRefused("unexpected _frombuffer arguments")
        return _array(args[0], args[1], args[2], args[3] == "F")
    raise PickleRefused(f"{func.name} cannot be called")


def _build(obj, state) -> None:
    if isinstance(obj, _Dtype):  # (3, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[1] in ("<", ">", "|", "=")
                and state[2] is None and state[3] is None and state[4] is None):
            raise PickleRefused(f"unexpected dtype state {state!r}"[:120])
        if state[1] in "<>":
            obj.dtype = obj.dtype.newbyteorder(state[1])
        return
    if isinstance(obj, _Array):  # (version, shape, dtype, is_fortran, raw bytes)
        if not (isinstance(state, tuple) and len(state) == 5 and state[3] in (0, 1)) or obj.array is not None:
            raise PickleRefused("unexpected array state")
        obj.array = _array(state[4], state[2], state[1], bool(state[3]))
        return
    raise PickleRefused(f"BUILD on {type(obj).__name__}")


def _plain(value, depth: int = 0, done: dict | None = None, budget: list[int] | None = None):
    """The parsed value with arrays in place of their placeholders; anything still a placeholder is refused.

    A container the memo shares between places is converted once (``done``, by identity), and every
    reference spends its length from ``budget``: a small file whose lists refer to one large list many
    times is refused at once instead of being copied into a value of billions of items.
    """
    done = {} if done is None else done
    budget = [MAX_REFERENCED] if budget is None else budget
    if isinstance(value, _Array):
        if value.array is None:
            raise PickleRefused("an array without data")
        return value.array
    if isinstance(value, (_Global, _Dtype, _Mark)):
        raise PickleRefused(f"a {type(value).__name__.strip('_').lower()} is not data")
    if isinstance(value, (list, tuple, dict)):
        budget[0] -= len(value)
        if budget[0] < 0:
            raise PickleRefused("more items through shared references than the file's size allows: not a CIFAR file")
        if id(value) in done:
            return done[id(value)]
    if isinstance(value, (list, tuple)):
        if depth > 1:
            raise PickleRefused("containers nested deeper than CIFAR's")
        out: object = type(value)(_plain(v, depth + 1, done, budget) for v in value)
    elif isinstance(value, dict):
        if depth > 0:
            raise PickleRefused("a dict inside the batch dict")
        out = {k: _plain(v, depth + 1, done, budget) for k, v in value.items()}
    else:
        return value
    done[id(value)] = out
    return out


def reference_budget(file_bytes: int) -> int:
    """Items the parsed value may reach through references, repeats counted: proportional to the file's size
    (a real CIFAR file reaches about one item per 1,500 bytes; every item costs at least 2 bytes of pickle
    without sharing), so a small crafted file is refused after work of the order of its own size."""
    return min(MAX_REFERENCED, 1000 + file_bytes)


def _key(value):
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return value
    raise PickleRefused(f"a {type(value).__name__.strip('_')} as a dict key")


def parse_pickle(data: bytes):
    """The value a CIFAR pickle describes, without executing it (see above); raises PickleRefused."""
    stack: list = []
    marks: list[int] = []
    memo: dict = {}

    def pop_mark() -> list:
        if not marks:
            raise PickleRefused("no MARK")
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    def pop():
        if not stack or (marks and len(stack) <= marks[-1]):
            raise PickleRefused("stack underflow")
        return stack.pop()

    try:
        ops = pickletools.genops(io.BytesIO(data))
        arg: Any
        for count, (opcode, arg, _pos) in enumerate(ops):
            name = opcode.name
            if count >= MAX_OPCODES:
                raise PickleRefused(f"more than {MAX_OPCODES} opcodes: not a CIFAR file")
            if name not in _DATA_OPCODES:
                raise PickleRefused(f"opcode {name} is not used by CIFAR files")
            if len(stack) > MAX_ITEMS or len(memo) > MAX_ITEMS:
                raise PickleRefused("too many items")
            if name in ("PROTO", "FRAME"):
                if name == "PROTO" and not 2 <= arg <= 5:
                    raise PickleRefused(f"pickle protocol {arg}")
            elif name == "STOP":
                if len(stack) != 1 or marks:
                    raise PickleRefused("malformed end")
                return _plain(stack[0], budget=[reference_budget(len(data))])
            elif name == "MARK":
                marks.append(len(stack))
            elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE"):
                stack.append({"EMPTY_DICT": dict, "EMPTY_LIST": list, "EMPTY_TUPLE": tuple}[name]())
            elif name in ("DICT", "SETITEMS"):
                items = pop_mark()
                if len(items) % 2:
                    raise PickleRefused("odd number of dict items")
                target = {} if name == "DICT" else pop()
                if not isinstance(target, dict):
                    raise PickleRefused("SETITEMS on a non-dict")
                target.update((_key(k), v) for k, v in zip(items[::2], items[1::2]))
                stack.append(target)
            elif name == "SETITEM":
                value, key, target = pop(), pop(), pop()
                if not isinstance(target, dict):
                    raise PickleRefused("SETITEM on a non-dict")
                target[_key(key)] = value
                stack.append(target)
            elif name in ("LIST", "APPENDS"):
                items = pop_mark()
                target = [] if name == "LIST" else pop()
                if not isinstance(target, list) or len(target) + len(items) > MAX_ITEMS:
                    raise PickleRefused("APPENDS on a non-list or past the item cap")
                target.extend(items)
                stack.append(target)
            elif name == "APPEND":
                value, target = pop(), pop()
                if not isinstance(target, list) or len(target) >= MAX_ITEMS:
                    raise PickleRefused("APPEND on a non-list or past the item cap")
                target.append(value)
                stack.append(target)
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = [pop() for _ in range(n)][::-1]
                stack.append(tuple(items))
            elif name == "NONE":
                stack.append(None)
            elif name in ("NEWTRUE", "NEWFALSE"):
                stack.append(name == "NEWTRUE")
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                if not stack:
                    raise PickleRefused("memoize on an empty stack")
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise PickleRefused(f"memo {arg} unset")
                stack.append(memo[arg])
            elif name == "GLOBAL":
                module, _, attr = arg.partition(" ")
                stack.append(_global(module, attr))
            elif name == "STACK_GLOBAL":
                attr, module = pop(), pop()
                if not (isinstance(module, str) and isinstance(attr, str)):
                    raise PickleRefused("STACK_GLOBAL needs two strings")
                stack.append(_global(module, attr))
            elif name == "REDUCE":
                args, func = pop(), pop()
                if not isinstance(func, _Global):
                    raise PickleRefused("REDUCE on a non-callable")
                stack.append(_call(func, args))
            elif name == "BUILD":
                state, obj = pop(), pop()
                _build(obj, state)
                stack.append(obj)
            else:  # ints, floats, strings, bytes: genops has decoded them already
                stack.append(bytes(arg) if isinstance(arg, bytearray) else arg)
    except PickleRefused:
        raise
    except Exception as err:  # noqa: BLE001 - truncated or malformed opcodes
        raise PickleRefused(f"malformed pickle: {type(err).__name__}: {str(err)[:100]}") from err
    raise PickleRefused("no STOP opcode")


def _global(module: str, attr: str) -> _Global:
    name = _CALLS.get((module, attr))
    if name is None:
        raise PickleRefused(f"refusing to load {module}.{attr} from a CIFAR pickle"[:160])
    return _Global(name)


def read_pickle(path: Path) -> dict:
    """A CIFAR pickle as a dict with str keys (Python 2 strings read as latin1), parsed without executing it."""
    path = regular_file(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise PickleRefused(f"{size} bytes, more than any CIFAR file ({MAX_FILE_BYTES})")
    raw = parse_pickle(path.read_bytes())
    if not isinstance(raw, dict):
        raise ValueError(f"expected a dict, got {type(raw).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


def rows_to_images(rows) -> np.ndarray:
    """``(N, 3072)`` rows (R, G, B planes) -> uint8 ``(N, 32, 32, 3)``."""
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8:
        kind = rows.dtype if isinstance(rows, np.ndarray) else type(rows).__name__
        raise ValueError(f"data rows must be a uint8 array (CIFAR's pixels), got {kind}")
    if rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32:
        raise ValueError(f"expected (N, 3072) rows, got shape {rows.shape}")
    return np.ascontiguousarray(rows.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _resize(images: np.ndarray, side: int) -> np.ndarray:
    if images.shape[1] == side:
        return images
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BILINEAR))
                     for img in images])


def check_layout(layout: CifarLayout, data_root: Path) -> Path:
    return dataset_folder(data_root, (layout.folder,), (*layout.train_files, layout.test_file, layout.meta_file),
                          layout.expected, layout.how)


def _read_batches(folder: Path, files: tuple[str, ...], label_key: str, num_classes: int,
                  skips: Skips) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        try:
            batch = read_pickle(folder / name)
            x = rows_to_images(batch["data"])
            y = np.asarray(batch[label_key], np.int64)
            if len(y) != len(x) or (len(y) and (y.min() < 0 or y.max() >= num_classes)):
                raise ValueError(f"{len(x)} rows but {len(y)} labels in range {y.min(initial=0)}..{y.max(initial=0)}")
        except FileNotFoundError:
            skips.add("missing", folder / name)
            continue
        except Exception as err:  # noqa: BLE001 - any damage to a batch means "unreadable"
            skips.add("unreadable", folder / name, err)
            continue
        images.append(x)
        labels.append(y)
    if not images:
        return np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(images), np.concatenate(labels)


def class_names(path: Path, key: str) -> tuple[str, ...]:
    """The class names of a CIFAR meta file; a one-line LayoutError when they cannot be read (nothing can be
    labelled without them)."""
    try:
        meta = read_pickle(path)
    except (OSError, ValueError) as err:
        raise LayoutError(f"{path}: cannot be read: {' '.join(str(err).split())[:160]}") from err
    names = meta.get(key)
    if not isinstance(names, list) or not 2 <= len(names) <= 100_000 or \
            not all(isinstance(n, (str, bytes)) for n in names):
        raise LayoutError(f"{path}: no {key!r} list of class names (keys: {[str(k) for k in list(meta)[:5]]})")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)


def build_layout(layout: CifarLayout, data_root: Path, scratch: Path, side: int = IMAGE_SIDE) -> DatasetSplits:
    folder = check_layout(layout, data_root)
    classes = class_names(folder / layout.meta_file, layout.names_key)
    skips = Skips()
    parts = {}
    for split, files in (("train", layout.train_files), ("test", (layout.test_file,))):
        x, y = _read_batches(folder, files, layout.label_key, len(classes), skips)
        require_samples(layout.name, split, len(y), skips)
        parts[split] = ModalityData(IMAGE, _resize(x, side), y, classes)
    skips.write(scratch, {split: len(part) for split, part in parts.items()})
    return DatasetSplits(layout.name, parts["train"], parts["test"])


def build_cifar10(data_root: Path, scratch: Path) -> DatasetSplits:
    return build_layout(CIFAR10, data_root, scratch)


def build_cifar100(data_root: Path, scratch: Path) -> DatasetSplits:
    return build_layout(CIFAR100, data_root, scratch)


def check_cifar10(data_root: Path) -> None:
    check_layout(CIFAR10, data_root)


def check_cifar100(data_root: Path) -> None:
    check_layout(CIFAR100, data_root)

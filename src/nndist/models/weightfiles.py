"""Weights files as lazy tensor sources: names, shapes and dtypes up front, tensors one at a time.

:func:`open_weights` opens any checkpoint without model code and without reading its data::

    with open_weights("Llama-3.2-1B/") as src:          # folder, index.json or a single file
        for info in src.infos.values():                 # name, shape, dtype: no data read
            t = src.read(info.name)                     # one tensor, in its stored dtype

Inputs:

* ``.safetensors``: read with ``safetensors.safe_open`` (mmap).
* a sharded Hugging Face folder, or its ``*.safetensors.index.json`` / ``*.bin.index.json``:
  every shard the index names (a missing shard is an error, not a partial checkpoint). A folder
  is resolved in this order: a safetensors index, ``model.safetensors``, a ``.bin`` index,
  ``pytorch_model.bin``, else its only weights file, else its ``*-0000k-of-0000n.*`` shards.
* ``.pt``/``.pth``/``.bin``/``.th``/``.ckpt`` (PyTorch): ``torch.load(weights_only=True)``, with
  ``mmap=True`` for the zip format (every ``torch.save`` since 1.6); the legacy format is loaded
  whole. The state dict may be the file itself or nested under one of :data:`STATE_DICT_KEYS`
  (``{"state_dict": ...}``, ``{"model": ...}``, ``{"module": ...}``, also nested twice), or under
  any entry named with ``key=`` (a dotted path such as ``"state_dict_ema"``).
* ``.npz``: shapes and dtypes from each member's ``.npy`` header; a member is decompressed only
  when read (``allow_pickle=False``).

Decisions:

* Names. A prefix that every name of a source shares and that comes from a wrapper, ``module.``
  (DataParallel/DistributedDataParallel) or ``_orig_mod.`` (``torch.compile``), is stripped,
  repeatedly (``module._orig_mod.``), so that a wrapped and a plain checkpoint of one model have
  the same names; :attr:`TensorSource.prefix` says what was stripped. A prefix on only some names
  is kept (it is then part of the model's own naming). ``strip_prefix=False`` keeps every name.
* Order. PyTorch state dicts and ``.npz`` keep their stored order (module order). safetensors
  stores names sorted by dtype and name, so tensors of safetensors files and indexes are in
  natural order (``layers.2`` before ``layers.10``).
* dtypes. Every floating dtype is *summarised* (float64/32/16, bfloat16, float8: all exactly
  representable in float32 or float64); integer, bool and other tensors are only listed
  (:attr:`TensorInfo.summarised` is False) and never read by the tables.
* Safety. Nothing is ever unpickled except by PyTorch's weights-only unpickler (tensors,
  containers, numbers, strings, ``argparse.Namespace``); a pickle that would build any other
  object is refused before anything runs. ``.npz`` members holding Python objects are refused.
* Memory. Listing reads only headers. A tensor read from safetensors or a zip PyTorch file is a
  view of the file's mmap: its pages become resident as they are used and stay resident while
  the mapping lives, so each shard's mapping is reopened once :data:`REMAP_BYTES` have been read
  through it. Resident memory is then about the tensors the caller holds plus at most
  ``REMAP_BYTES`` of earlier small tensors, never the whole file.

Every bad input raises :class:`~nndist.errors.NndistError` with one line naming the file and the
fix: missing path, empty file, truncated or corrupt safetensors/zip/npz, refused pickle, an
index naming a missing shard (or a tensor its shard lacks), a folder without weights, a name
held by two shards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import NndistError

__all__ = [
    "REMAP_BYTES",
    "STATE_DICT_KEYS",
    "STRIPPED_PREFIXES",
    "WEIGHT_SUFFIXES",
    "MappingSource",
    "ModuleSource",
    "TensorInfo",
    "TensorSource",
    "WeightFile",
    "as_source",
    "is_summarised_dtype",
    "open_weights",
    "resolve_weight_files",
]

#: File suffixes read as weights, and the reader of each.
WEIGHT_SUFFIXES: dict[str, str] = {
    ".safetensors": "safetensors",
    ".pt": "torch",
    ".pth": "torch",
    ".bin": "torch",
    ".th": "torch",
    ".ckpt": "torch",
    ".npz": "npz",
}
#: Entries of a PyTorch checkpoint dict that may hold the state dict, tried in this order.
STATE_DICT_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "module", "params")
#: Wrapper prefixes stripped when every name of a source starts with one.
STRIPPED_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
#: Bytes read through one mmap of a shard before it is reopened (see the module docstring).
REMAP_BYTES = 64 << 20

# How deep STATE_DICT_KEYS are followed ({"model": {"state_dict": ...}} is two levels).
_MAX_NESTING = 3
_SHARD_NAME = re.compile(r"-\d+-of-\d+\.[^.]+$")
_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}
_INPUTS_HINT = "a .safetensors, .pt/.pth/.bin or .npz file, a Hugging Face folder or its *.index.json"


def is_summarised_dtype(dtype: str) -> bool:
    """True for the floating dtypes that tables summarise (``"bfloat16"``, ``"float32"``, ...)."""
    dt = getattr(torch, dtype, None)
    return isinstance(dt, torch.dtype) and dt.is_floating_point


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, cut at its first sentence when long."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    return line.split(". ")[0] if len(line) > 120 else line


def _natural_key(name: str) -> list[Any]:
    # digit runs compare as numbers: layers.2 < layers.10
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class TensorInfo:
    """What is known about a tensor without reading it.

    Attributes:
        name: the tensor's name in its source (after prefix stripping).
        shape: its shape.
        dtype: its stored dtype as PyTorch names it (``"bfloat16"``, ``"int64"``); ``.npz``
            members of dtypes PyTorch lacks keep numpy's name (``"<U5"``).
        file: the file holding it; None for in-memory sources.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path | None = None

    @property
    def numel(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def summarised(self) -> bool:
        """True for floating tensors; integer, bool and other tensors are only listed."""
        return is_summarised_dtype(self.dtype)


class TensorSource:
    """Named tensors, listed up front and read one at a time.

    Subclasses provide the entries and ``_read``; the base class owns the names (prefix
    stripping, duplicate check) and the context-manager protocol.

    Args:
        label: how the source is named in tables and messages (a path, a model's name).
        entries: ``(stored_name, shape, dtype, file)`` per tensor, in the source's order.
        strip_prefix: strip a :data:`STRIPPED_PREFIXES` prefix that every name shares.

    Raises:
        NndistError: if two entries have the same name.
    """

    def __init__(
        self,
        label: str,
        entries: Iterable[tuple[str, tuple[int, ...], str, Path | None]],
        *,
        strip_prefix: bool = True,
    ) -> None:
        self.label = label
        entries = list(entries)
        self.prefix = _common_wrapper_prefix([e[0] for e in entries]) if strip_prefix else ""
        self._stored: dict[str, str] = {}
        infos: dict[str, TensorInfo] = {}
        for stored, shape, dtype, file in entries:
            name = stored[len(self.prefix) :]
            if name in infos:
                where = sorted({str(infos[name].file), str(file)})
                raise NndistError(
                    f"{label}: tensor {name!r} is stored twice (in {' and '.join(where)}); the files "
                    "belong to different checkpoints: keep one copy (or pass the file you mean)"
                )
            infos[name] = TensorInfo(name, tuple(int(d) for d in shape), dtype, file)
            self._stored[name] = stored
        self._infos = infos

    @property
    def infos(self) -> Mapping[str, TensorInfo]:
        """Every tensor's :class:`TensorInfo`, by name, in the source's order."""
        return self._infos

    def names(self) -> list[str]:
        """Tensor names, in the source's order."""
        return list(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self._infos.values())

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name`` in its stored dtype and shape (CPU for files).

        Raises:
            NndistError: an unknown name, or a file that fails while being read.
        """
        if name not in self._infos:
            raise NndistError(f"{self.label}: no tensor named {name!r}; valid names start with "
                              f"{', '.join(self.names()[:5])}")
        return self._read(self._stored[name], self._infos[name])

    def _read(self, stored: str, info: TensorInfo) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        """Releases open files and mappings (the source can no longer be read)."""

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r}; {len(self)} tensors)"


def _common_wrapper_prefix(names: list[str]) -> str:
    """The wrapper prefixes (see :data:`STRIPPED_PREFIXES`) that every name starts with."""
    prefix = ""
    while names:
        rest = [n[len(prefix) :] for n in names]
        nxt = next(
            (p for p in STRIPPED_PREFIXES if all(r.startswith(p) and len(r) > len(p) for r in rest)), None
        )
        if nxt is None:
            return prefix
        prefix += nxt
    return prefix


# -------------------------------------------------------------------------------- in memory
class ModuleSource(TensorSource):
    """An ``nn.Module``'s parameters (``named_parameters()``), optionally with its buffers.

    Args:
        module: the model.
        buffers: also list persistent buffers (BatchNorm running statistics, ...), in
            ``state_dict()`` order, exactly the tensors a checkpoint of the model holds.
        label: defaults to ``module.nndist_name`` or the class name.
    """

    def __init__(self, module: nn.Module, *, buffers: bool = False, label: str | None = None) -> None:
        if buffers:
            tensors = dict(module.state_dict(keep_vars=True))
        else:
            tensors = dict(module.named_parameters())
        self._tensors = tensors
        label = label or getattr(module, "nndist_name", None) or type(module).__name__
        super().__init__(label, ((k, tuple(v.shape), _dtype_name(v.dtype), None) for k, v in tensors.items()))

    def _read(self, stored: str, info: TensorInfo) -> torch.Tensor:
        return self._tensors[stored].detach()


class MappingSource(TensorSource):
    """A state dict in memory: ``{name: torch.Tensor | numpy array}``.

    Raises:
        NndistError: if a value is not a tensor or array.
    """

    def __init__(self, tensors: Mapping[str, Any], *, label: str = "state dict") -> None:
        converted: dict[str, torch.Tensor] = {}
        for k, v in tensors.items():
            if isinstance(v, np.ndarray):
                v = torch.from_numpy(v)
            if not isinstance(v, torch.Tensor):
                raise NndistError(
                    f"{label}: entry {k!r} is a {type(v).__name__}, not a tensor; pass a dict of tensors "
                    "(model.state_dict())"
                )
            converted[str(k)] = v
        self._tensors = converted
        super().__init__(label, ((k, tuple(v.shape), _dtype_name(v.dtype), None) for k, v in converted.items()))

    def _read(self, stored: str, info: TensorInfo) -> torch.Tensor:
        return self._tensors[stored].detach()


# -------------------------------------------------------------------------------- shard readers
class _Shard:
    """One file of a checkpoint: its entries, and its tensors read on demand.

    ``mapped`` readers return views of an mmap of the whole file; they are reopened once
    :data:`REMAP_BYTES` went through one mapping, whose resident pages are then freed as soon
    as the caller drops the tensors it returned.
    """

    mapped = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[tuple[str, tuple[int, ...], str]] = []
        self.metadata: dict[str, str] = {}
        self._handle: Any = None
        self._since_open = 0  # bytes read through the current handle

    def read(self, name: str, nbytes: int) -> torch.Tensor:
        full = self.mapped and self._since_open and self._since_open + nbytes > REMAP_BYTES
        if self._handle is None or full:
            self._handle = None
            self._handle = self._open()
            self._since_open = 0
        self._since_open += nbytes
        try:
            return self._get(name)
        except NndistError:
            raise
        except Exception as exc:  # noqa: BLE001 - every reader's failure becomes one line
            raise NndistError(
                f"{self.path}: cannot read tensor {name!r} ({_first_line(exc)}); the file is truncated or "
                "corrupt: write or download it again"
            ) from exc

    def _open(self) -> Any:
        raise NotImplementedError

    def _get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        self._handle = None


class _SafetensorsShard(_Shard):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._handle = handle = self._open()  # nothing read yet: no page of it is resident
        self.metadata = dict(handle.metadata() or {})
        entries = []
        for name in handle.keys():
            sl = handle.get_slice(name)
            raw = sl.get_dtype()
            entries.append((name, tuple(sl.get_shape()), _SAFETENSORS_DTYPES.get(raw, raw.lower())))
        self.entries = sorted(entries, key=lambda e: _natural_key(e[0]))

    def _open(self) -> Any:
        from safetensors import SafetensorError, safe_open

        try:
            return safe_open(str(self.path), framework="pt", device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise NndistError(
                f"{self.path}: not a readable safetensors file ({_first_line(exc)}); it is truncated or "
                "corrupt: write or download it again"
            ) from exc

    def _get(self, name: str) -> torch.Tensor:
        return self._handle.get_tensor(name)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


class _TorchShard(_Shard):
    def __init__(self, path: Path, key: str | None) -> None:
        super().__init__(path)
        self._key = key
        self.mapped = _is_zip(path)  # the legacy (pre-1.6) format cannot be mapped: loaded whole
        self._keys: tuple[str, ...] | None = None
        self._handle = self._open()
        self.entries = [(k, tuple(v.shape), _dtype_name(v.dtype)) for k, v in self._handle.items()]

    def _open(self) -> Any:
        path = self.path
        try:
            with warnings.catch_warnings(), _allowed_globals():
                # Raised for plain pickles; the weights-only unpickler still refuses anything unsafe.
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=self.mapped)
        except pickle.UnpicklingError as exc:
            raise NndistError(
                f"{path}: refused to load: it holds Python objects other than tensors (a pickle that could "
                "run code) or is corrupt; nothing was run. nndist reads PyTorch files only with "
                "weights_only=True: save the state dict alone (torch.save(model.state_dict(), ...)) or "
                "use .safetensors"
            ) from exc
        except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
            raise NndistError(
                f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)}); it is truncated or "
                "corrupt: write or download it again"
            ) from exc
        if self._keys is None:
            self._keys = _state_dict_keys(obj, path, self._key)
        for k in self._keys:
            obj = obj[k]
        return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}

    def _get(self, name: str) -> torch.Tensor:
        return self._handle[name]


@contextlib.contextmanager
def _allowed_globals() -> Iterator[None]:
    """Lets the weights-only unpickler build ``argparse.Namespace`` (training scripts store their
    arguments beside the weights); it holds attributes only, no code."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    with scoped([argparse.Namespace]) if scoped is not None else contextlib.nullcontext():
        yield


def _state_dict_keys(obj: Any, path: Path, key: str | None) -> tuple[str, ...]:
    """The entries to follow from the loaded object to the mapping that holds the tensors."""

    def has_tensors(m: Any) -> bool:
        return isinstance(m, Mapping) and any(isinstance(v, torch.Tensor) for v in m.values())

    def listing(m: Any) -> str:
        if not isinstance(m, Mapping):
            return f"it is a {type(m).__name__}"
        keys = [str(k) for k in m]
        return "its keys: " + (", ".join(keys[:12]) + (" ..." if len(keys) > 12 else "") if keys else "none")

    if key is not None:
        node, keys = obj, tuple(key.split("."))
        for i, k in enumerate(keys):
            if not isinstance(node, Mapping) or k not in node:
                at = ".".join(keys[:i]) or "the top level"
                raise NndistError(f"{path}: has no entry {k!r} at {at} ({listing(node)}); pass one of those keys")
            node = node[k]
        if not has_tensors(node):
            raise NndistError(f"{path}: entry {key!r} holds no tensors ({listing(node)}); pass the key of the state dict")
        return keys
    node, keys = obj, ()
    for _ in range(_MAX_NESTING + 1):
        if has_tensors(node):
            return keys
        inner = next((k for k in STATE_DICT_KEYS if isinstance(node, Mapping) and isinstance(node.get(k), Mapping)), None)
        if inner is None:
            break
        node, keys = node[inner], keys + (inner,)
    raise NndistError(
        f"{path}: holds no state dict ({listing(obj)}); expected a dict of tensors, or one under "
        f"{', '.join(STATE_DICT_KEYS)}: pass the entry that holds it as key= (e.g. key='state_dict_ema')"
    )


class _NpzShard(_Shard):
    mapped = False  # members are decompressed into private copies

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            with zipfile.ZipFile(path) as zf:
                for member in zf.infolist():
                    if not member.filename.endswith(".npy"):
                        continue
                    with zf.open(member) as fh:
                        version = np.lib.format.read_magic(fh)
                        read_header = {
                            (1, 0): np.lib.format.read_array_header_1_0,
                            (2, 0): np.lib.format.read_array_header_2_0,
                        }.get(version)
                        if read_header is None:
                            raise ValueError(f"unsupported .npy version {version} in {member.filename}")
                        shape, _, dtype = read_header(fh)
                    name = member.filename[: -len(".npy")]
                    if dtype.hasobject:
                        raise NndistError(
                            f"{path}: refused to load: member {name!r} holds Python objects (a pickle that "
                            "could run code); nothing was run: save numeric arrays only (np.savez(f, **arrays))"
                        )
                    self.entries.append((name, tuple(shape), _numpy_dtype_name(dtype)))
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise NndistError(
                f"{path}: not a readable .npz file ({_first_line(exc)}); it is truncated or corrupt: write it again"
            ) from exc

    def _open(self) -> Any:
        return np.load(self.path, allow_pickle=False)

    def _get(self, name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self._handle[name]))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None


def _numpy_dtype_name(dtype: np.dtype) -> str:
    try:
        return _dtype_name(torch.from_numpy(np.empty(0, dtype=dtype)).dtype)
    except TypeError:
        return dtype.str


_SHARD_READERS = {"safetensors": _SafetensorsShard, "npz": _NpzShard}


def _open_shard(path: Path, key: str | None) -> _Shard:
    if not path.is_file():
        raise NndistError(f"{path} does not exist; pass {_INPUTS_HINT}")
    if path.stat().st_size == 0:
        raise NndistError(f"{path} is empty (0 bytes): truncated by an interrupted save or download; write or download it again")
    kind = WEIGHT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise NndistError(
            f"{path}: unknown weights file type {path.suffix!r}; pass {_INPUTS_HINT} "
            f"(suffixes {', '.join(WEIGHT_SUFFIXES)})"
        )
    if kind == "torch":
        return _TorchShard(path, key)
    return _SHARD_READERS[kind](path)


# -------------------------------------------------------------------------------- files
def _read_index(index: Path) -> dict[str, str]:
    """``weight_map`` of a Hugging Face index: tensor name -> shard file name."""
    if index.stat().st_size == 0:
        raise NndistError(f"{index} is empty (0 bytes): the download was interrupted; download it again")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError("weight_map is not a mapping of names to file names")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise NndistError(
            f"{index}: not a readable index ({type(exc).__name__}: {_first_line(exc)}); expected JSON with a "
            "'weight_map' of tensor names to shard files: download it again"
        ) from exc
    return weight_map


def resolve_weight_files(path: str | os.PathLike[str]) -> tuple[list[Path], Path | None]:
    """The files a path stands for, and the index that lists them (None without one).

    Args:
        path: a weights file, an ``*.index.json`` or a folder (see the module docstring).

    Returns:
        ``(files, index)``: the files in natural order; every shard an index names.

    Raises:
        NndistError: missing path, an index naming a missing shard, a folder without weights or
            with several unrelated weights files.
    """
    path = Path(path)
    if not path.exists():
        raise NndistError(f"{path} does not exist; pass {_INPUTS_HINT}")
    index: Path | None = None
    if path.is_dir():
        found = [p for p in path.iterdir() if p.is_file()]
        # Hugging Face's own preference: safetensors before PyTorch pickles, an index before one file.
        for pattern in ("*.safetensors.index.json", "model.safetensors", "*.bin.index.json", "pytorch_model.bin"):
            hits = sorted(p for p in found if p.match(pattern))
            if hits and hits[0].name.endswith(".index.json"):
                index = hits[0]
                break
            if hits:
                return hits[:1], None
        else:
            weights = sorted((p for p in found if p.suffix.lower() in WEIGHT_SUFFIXES), key=lambda p: _natural_key(p.name))
            if len(weights) == 1 or (weights and all(_SHARD_NAME.search(p.name) for p in weights)):
                return weights, None
            if weights:
                raise NndistError(
                    f"{path}: holds several weights files and no index.json ({', '.join(p.name for p in weights[:6])}); "
                    "pass the file you mean"
                )
            raise NndistError(
                f"{path}: folder holds no weights (no .safetensors, .pt/.pth/.bin, .npz or *.index.json); "
                "pass the checkpoint file, or the folder that holds model.safetensors"
            )
    elif path.name.endswith(".index.json"):
        index = path
    else:
        return [path], None
    shards = sorted(set(_read_index(index).values()), key=_natural_key)
    if not shards:
        raise NndistError(f"{index}: the index lists no tensors; download it again")
    files = [index.parent / s for s in shards]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise NndistError(
            f"{index}: names shard {missing[0].name}, which is missing from {index.parent}"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: download every shard the "
            f"index lists ({len(files)} files)"
        )
    return files, index


class WeightFile(TensorSource):
    """A checkpoint on disk: one file, or every shard of a Hugging Face folder/index.

    Use :func:`open_weights` to create one. Attributes beyond :class:`TensorSource`'s:

    Attributes:
        path: the path as given.
        files: the files read (shards in natural order).
        index: the index listing the shards, or None.
        metadata: the safetensors metadata of the files, merged (empty for other formats).
    """

    def __init__(self, path: str | os.PathLike[str], *, key: str | None = None, strip_prefix: bool = True) -> None:
        self.path = Path(path)
        self.files, self.index = resolve_weight_files(path)
        self._shards: dict[Path, _Shard] = {}
        try:
            for f in self.files:
                self._shards[f] = _open_shard(f, key)
            self.metadata: dict[str, str] = {}
            for shard in self._shards.values():
                self.metadata.update(shard.metadata)
            entries = [(n, shape, dtype, f) for f, shard in self._shards.items() for n, shape, dtype in shard.entries]
            if not entries:
                raise NndistError(f"{path}: holds no tensors; pass the checkpoint that holds the weights")
            if self.index is not None:
                self._check_index(entries)
            if any(isinstance(s, _SafetensorsShard) for s in self._shards.values()):
                entries.sort(key=lambda e: _natural_key(e[0]))
            super().__init__(str(path), entries, strip_prefix=strip_prefix)
        except BaseException:
            self.close()
            raise

    def _check_index(self, entries: list[tuple[str, tuple[int, ...], str, Path]]) -> None:
        assert self.index is not None
        held = {(n, f.name) for n, _, _, f in entries}
        for name, shard in _read_index(self.index).items():
            if (name, shard) not in held:
                raise NndistError(
                    f"{self.index}: says tensor {name!r} is in {shard}, but that shard does not hold it; the "
                    "index and the shards come from different versions: download them again together"
                )

    def _read(self, stored: str, info: TensorInfo) -> torch.Tensor:
        assert info.file is not None
        nbytes = info.numel * _itemsize(info.dtype)
        return self._shards[info.file].read(stored, nbytes)

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()


def _itemsize(dtype: str) -> int:
    dt = getattr(torch, dtype, None)
    return dt.itemsize if isinstance(dt, torch.dtype) else 8


def open_weights(path: str | os.PathLike[str], *, key: str | None = None, strip_prefix: bool = True) -> WeightFile:
    """Opens a weights file or folder as a lazy :class:`TensorSource` (see the module docstring).

    Args:
        path: ``.safetensors``, ``.pt``/``.pth``/``.bin``/``.th``/``.ckpt``, ``.npz``, a
            Hugging Face folder or its ``*.index.json``.
        key: for PyTorch files, the dotted entry holding the state dict (default: the file
            itself or the first of :data:`STATE_DICT_KEYS` that holds tensors).
        strip_prefix: strip a ``module.``/``_orig_mod.`` prefix shared by every name.

    Returns:
        the opened source; close it (or use it as a context manager) when done.

    Raises:
        NndistError: for every bad input listed in the module docstring.
    """
    return WeightFile(path, key=key, strip_prefix=strip_prefix)


def as_source(obj: Any, *, buffers: bool = False, key: str | None = None) -> TensorSource:
    """A :class:`TensorSource` for a path, an ``nn.Module``, a state dict or a source.

    Args:
        obj: a source (returned as is), a path (:func:`open_weights`), an ``nn.Module``
            (:class:`ModuleSource`) or a mapping of tensors (:class:`MappingSource`).
        buffers: for a module, also its persistent buffers.
        key: for a PyTorch file, the entry holding the state dict.

    Raises:
        NndistError: for a bad path or file, or an object that holds no tensors.
    """
    if isinstance(obj, TensorSource):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return open_weights(obj, key=key)
    if isinstance(obj, nn.Module):
        return ModuleSource(obj, buffers=buffers)
    if isinstance(obj, Mapping):
        return MappingSource(obj)
    raise NndistError(
        f"cannot read weights from a {type(obj).__name__}; pass {_INPUTS_HINT}, an nn.Module or a state dict"
    )

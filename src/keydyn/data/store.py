"""The episode store: episodes concatenated along time in a zarr v3 group (layout in docs/dataset.md).

Writes are crash-safe. An episode becomes part of the store only when the root attribute `num_episodes` is
rewritten after all of its rows, so a process killed at any moment leaves at most rows past the committed end,
which readers ignore and `open(..., mode="a")` truncates (its resize deletes their chunk files). Metadata and
the chunks of committed rows rewritten in place are written atomically (temporary file + rename); the image
chunks of an appended episode, past the committed end, are written straight.

Reads are checked. Every chunk ends with a CRC-32C of its bytes (zarr's crc32c codec), every chunk of the
committed rows is written (also an all-zero one) so that a missing chunk file is damage, never zeros, and
every episode carries the SHA-256 of its contents (`meta/content_sha256`), which `verify` recomputes.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec
from zarr.storage import LocalStore

import keydyn

FORMAT = "keydyn-episodes"
FORMAT_VERSION = 2  # 2: CRC-32C per chunk, every chunk written, per-episode SHA-256 (1 had none of these)
CONTENT_HASH = "content_sha256"  # per-episode field: SHA-256 of the episode's rows and metadata, (32,) uint8
WRITE_THREADS = 8  # arrays an episode's append writes at once (their writes wait on the file system, not the CPU)
_ROWS_PER_CHUNK = 4096  # for small per-frame arrays (actions, poses, states)


class StoreError(RuntimeError):
    """A dataset store that cannot be used: missing, corrupt, incompatible or misused."""


_CNAME, _CLEVEL = "zstd", 3  # lossless; ~20x smaller than raw images at ~1 ms per 320x240 RGB-D frame


def _compressors(dtype: np.dtype) -> tuple[BloscCodec, Crc32cCodec]:
    """Blosc, then a CRC-32C of the compressed bytes appended (checked before every decompression)."""
    shuffle = BloscShuffle.bitshuffle if np.dtype(dtype).itemsize > 1 else BloscShuffle.shuffle
    return BloscCodec(cname=_CNAME, clevel=_CLEVEL, shuffle=shuffle), Crc32cCodec()


def _with_checksum(payload: bytes) -> bytes:
    """`payload` followed by its CRC-32C, little-endian, as zarr's crc32c codec writes it."""
    return payload + google_crc32c.value(payload).to_bytes(4, "little")


def _checksum_problem(chunk: bytes) -> str | None:
    """Why a stored chunk fails its CRC-32C (None when it passes)."""
    if len(chunk) < 4:
        return f"truncated ({len(chunk)} bytes)"
    if google_crc32c.value(chunk[:-4]).to_bytes(4, "little") != chunk[-4:]:
        return "checksum mismatch (truncated or corrupt)"
    return None


def _little_endian(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return np.ascontiguousarray(values.astype(values.dtype.newbyteorder("<"), copy=False))


def _digest(values: np.ndarray) -> bytes:
    """SHA-256 of an array's little-endian C-order bytes."""
    return hashlib.sha256(_little_endian(values).data).digest()


def _content_hash(parts: Iterable[tuple[str, bytes]]) -> np.ndarray:
    """The episode hash from (field name, field digest) pairs in sorted field order, (32,) uint8."""
    total = hashlib.sha256()
    for name, digest in parts:
        total.update(name.encode() + b"\0" + digest)
    return np.frombuffer(total.digest(), dtype=np.uint8)


class _MissingChunkError(StoreError):
    """A chunk file of the committed rows is missing."""


class _CheckedLocalStore(LocalStore):
    """A local zarr store for reading in which a missing chunk file is an error, not the array's fill value."""

    async def get(self, key: str, prototype=None, byte_range=None):
        value = await super().get(key, prototype, byte_range)
        if value is None and not key.endswith("zarr.json"):
            raise _MissingChunkError(key)
        return value


@dataclass(frozen=True)
class StoreDamage:
    """What `EpisodeStore.verify` found. `episodes`: episode -> its problems (e.g. "data/action/c.0.0: missing");
    `chunks`: the damaged chunk files, relative to the store (missing or failing their checksum)."""

    episodes: dict[int, list[str]]
    chunks: list[str]

    def __bool__(self) -> bool:
        return bool(self.episodes)

    def report(self, limit: int = 20) -> str:
        lines = [f"episode {e}: {'; '.join(problems)}" for e, problems in sorted(self.episodes.items())[:limit]]
        if len(self.episodes) > limit:
            lines.append(f"... and {len(self.episodes) - limit} more damaged episodes")
        return "\n".join(lines)


@dataclass(frozen=True)
class EncodedFrames:
    """Image frames already compressed into the store's chunk encoding (one chunk per frame).

    Compressing is the costly part of writing images, so collection workers do it in parallel and the
    writing process only stores the bytes. Attributes: `frame_shape` and `dtype` of one frame; `chunks`,
    one Blosc frame of the little-endian C-order bytes per frame followed by its CRC-32C; `sha256`, the
    digest of all frames' little-endian bytes (the episode's content hash is built from it).
    """

    frame_shape: tuple[int, ...]
    dtype: str
    chunks: tuple[bytes, ...]
    sha256: bytes

    def __len__(self) -> int:
        return len(self.chunks)


def encode_frames(frames: np.ndarray) -> EncodedFrames:
    """Compress (T, ...) image frames, one chunk each, exactly as the store's image arrays are encoded."""
    frames = np.asarray(frames)
    shuffle = Blosc.BITSHUFFLE if frames.dtype.itemsize > 1 else Blosc.SHUFFLE
    codec = Blosc(cname=_CNAME, clevel=_CLEVEL, shuffle=shuffle)
    little = _little_endian(frames)
    chunks = tuple(_with_checksum(bytes(codec.encode(frame))) for frame in little)
    return EncodedFrames(tuple(frames.shape[1:]), frames.dtype.str.lstrip("<>|="), chunks, _digest(little))


def _frame_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Images get one frame per chunk (random access for training); small rows share big chunks."""
    if len(shape) >= 2:
        return (1, *shape)
    return (_ROWS_PER_CHUNK, *shape)


class EpisodeStore:
    """Episodes of a pushing task.

    Per-frame arrays live under `data/` (one row per observation; all episodes concatenated), per-episode
    arrays under `meta/`. Episode i covers frames `episode_ends[i-1]:episode_ends[i]`. Use `create` and
    `open`, not the constructor.
    """

    def __init__(self, path: Path, root: zarr.Group, writable: bool) -> None:
        self.path = path
        self._root = root
        self._writable = writable
        self._writers: dict[str, zarr.Array] = {}  # array path -> its writing handle (resized in place)
        self._write_pool: ThreadPoolExecutor | None = None  # made on the first write, kept for the next episodes
        # Reads go through a store that refuses missing chunks; writes (which may read a chunk not yet written,
        # past the committed rows) through `root`.
        self._reader = zarr.open_group(store=_CheckedLocalStore(path, read_only=True), mode="r", zarr_format=3)
        self._num_episodes = int(root.attrs["num_episodes"])
        self._episode_ends = np.asarray(root["meta/episode_ends"][: self._num_episodes], dtype=np.int64)

    # -- creation and opening -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        attributes: Mapping[str, Any],
        frame_fields: Mapping[str, tuple[tuple[int, ...], str]],
        episode_fields: Mapping[str, tuple[tuple[int, ...], str]],
    ) -> EpisodeStore:
        """Create an empty store.

        Args:
            path: directory to create; it must not exist (or be empty).
            attributes: JSON-serialisable description (task config, cameras, seed, ...).
            frame_fields: name -> (shape of one frame, dtype), e.g. "top_down/rgb": ((240, 320, 3), "uint8").
            episode_fields: name -> (shape per episode, dtype) for per-episode metadata.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not a directory; choose another --out for the dataset")
        if path.exists() and any(path.iterdir()):
            raise StoreError(
                f"{path} already exists and is not empty; pass --resume to continue the collection stored "
                "there, or choose another --out"
            )
        try:
            json.dumps(dict(attributes))
        except TypeError as error:
            raise StoreError(f"store attributes must be JSON-serialisable: {error}") from error
        # Built beside its destination and renamed into place, so a kill during creation leaves no store; named
        # by process, so that two collections started at once cannot mix their files (the second fails below).
        for stale in path.parent.glob(f".{path.name}.creating-*"):
            owner = stale.name.rsplit("-", 1)[1]
            if owner.isdigit() and not _process_alive(int(owner)):
                shutil.rmtree(stale, ignore_errors=True)
        building = path.with_name(f".{path.name}.creating-{os.getpid()}")
        root = zarr.open_group(str(building), mode="w", zarr_format=3)
        for name, (shape, dtype) in frame_fields.items():
            root.create_array(
                f"data/{name}",
                shape=(0, *shape),
                chunks=_frame_chunks(tuple(shape)),
                dtype=dtype,
                compressors=_compressors(np.dtype(dtype)),
                fill_value=0,
                chunk_key_encoding={"name": "default", "separator": "."},  # flat: no directory per frame
            )
        fields = {"episode_ends": ((), "int64"), **dict(episode_fields), CONTENT_HASH: ((32,), "uint8")}
        for name, (shape, dtype) in fields.items():
            root.create_array(
                f"meta/{name}",
                shape=(0, *shape),
                chunks=(1024, *shape),
                dtype=dtype,
                compressors=_compressors(np.dtype(dtype)),
                fill_value=0,
            )
        root.attrs.update(
            {
                **dict(attributes),
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "keydyn_version": keydyn.__version__,
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "frame_fields": sorted(frame_fields),
                "episode_fields": sorted(fields),
                "num_episodes": 0,
            }
        )
        try:
            os.replace(building, path)  # onto a missing or empty directory
        except OSError as error:
            shutil.rmtree(building, ignore_errors=True)
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise StoreError(f"{path} was created by another process meanwhile; choose another --out") from error
        root = zarr.open_group(str(path), mode="r+", zarr_format=3)
        return cls(path, root, writable=True)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", check_chunks: bool = True) -> EpisodeStore:
        """Open and validate a store; mode "r" reads, "a" appends (and drops any uncommitted rows).

        check_chunks: also check that every chunk file of the committed rows exists (a directory listing per
            array; `verify` also reads them). `verify` and the repair of `keydyn collect --resume` open damaged
            stores with False.

        Raises:
            StoreError: the path is missing, not a keydyn store, of another format version, or damaged.
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise StoreError(f"{path} is not a keydyn dataset (no zarr.json); create one with `keydyn collect`")
        try:
            root = zarr.open_group(str(path), mode="r+" if mode == "a" else "r", zarr_format=3)
            attrs = dict(root.attrs)
        except Exception as error:
            raise StoreError(f"{path}: cannot read the zarr metadata ({error}); the store is corrupt") from error
        if attrs.get("format") != FORMAT:
            raise StoreError(f"{path} is a zarr group but not a keydyn episode store (format={attrs.get('format')!r})")
        version = attrs.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(
                f"{path} has store format version {version}; this keydyn ({keydyn.__version__}) reads version "
                f"{FORMAT_VERSION} (version 2 added the checksums that make damage visible). Re-collect it with "
                f"this version or use the keydyn that wrote it ({attrs.get('keydyn_version')})."
            )
        cls._validate(path, root, attrs)
        store = cls(path, root, writable=mode == "a")
        if mode == "a":
            store._truncate_uncommitted()
        if check_chunks:
            damaged = store._damaged_chunks()
            if damaged:
                raise StoreError(store._damage_message(damaged))
        return store

    @staticmethod
    def _validate(path: Path, root: zarr.Group, attrs: dict[str, Any]) -> None:
        n = attrs.get("num_episodes")
        if not isinstance(n, int) or n < 0:
            raise StoreError(f"{path}: attribute num_episodes={n!r} is invalid; the store is corrupt")
        arrays: dict[str, zarr.Array] = {}
        for array_path in [f"meta/{n}" for n in attrs["episode_fields"]] + [f"data/{n}" for n in attrs["frame_fields"]]:
            try:
                arrays[array_path] = root[array_path]
            except KeyError as error:
                raise StoreError(
                    f"{path}: array {array_path} is missing; the store is incomplete: re-collect it"
                ) from error
            except Exception as error:  # its zarr.json unreadable
                raise StoreError(
                    f"{path}: {array_path}/zarr.json (the array's metadata) cannot be read ({error}); the store is "
                    "corrupt: re-collect it"
                ) from error
        meta = {name: arrays[f"meta/{name}"] for name in attrs["episode_fields"]}
        data = {name: arrays[f"data/{name}"] for name in attrs["frame_fields"]}
        for name, array in meta.items():
            if array.shape[0] < n:
                raise StoreError(f"{path}: meta/{name} has {array.shape[0]} rows for {n} episodes; corrupt store")
        for key, problem in _chunk_problems(path, meta["episode_ends"], n, read=True):
            if problem is None:
                continue
            raise StoreError(
                f"{path}: {key} is {problem}: the index of the store's episodes is lost; re-collect into a new --out"
            )
        ends = np.asarray(meta["episode_ends"][:n])
        if n and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
            raise StoreError(f"{path}: meta/episode_ends is not strictly increasing; the store is corrupt")
        frames = int(ends[-1]) if n else 0
        for name, array in data.items():
            if array.shape[0] < frames:
                raise StoreError(
                    f"{path}: data/{name} has {array.shape[0]} frames but the episodes need {frames}; the store "
                    "is corrupt"
                )

    def _truncate_uncommitted(self) -> None:
        self.trim()
        for partial in self.path.rglob("*.partial"):  # temporary files of an interrupted atomic write
            partial.unlink(missing_ok=True)

    # -- reading ----------------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._root.attrs)

    @property
    def frame_fields(self) -> list[str]:
        return list(self._root.attrs["frame_fields"])

    @property
    def episode_fields(self) -> list[str]:
        return list(self._root.attrs["episode_fields"])

    @property
    def num_episodes(self) -> int:
        return self._num_episodes

    @property
    def num_frames(self) -> int:
        return int(self._episode_ends[-1]) if self._num_episodes else 0

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64, exclusive end frame of each episode."""
        return self._episode_ends.copy()

    def camera(self, name: str | None, option: str = "--camera") -> str:
        """Camera `name`, checked to be one of the store's, or the store's first camera when None; `option` is the
        setting named in the error."""
        cameras = list(self._root.attrs["cameras"])
        if name is None:
            return cameras[0]
        if name not in cameras:
            raise ValueError(f"{option} {name!r}: {self.path} has the cameras {', '.join(cameras)}; choose one of them")
        return name

    def episode_range(self, episode: int) -> tuple[int, int]:
        """[start, end) frame indices of `episode`."""
        if not 0 <= episode < self._num_episodes:
            raise IndexError(f"episode {episode} out of range: the store has {self._num_episodes} episodes")
        start = int(self._episode_ends[episode - 1]) if episode else 0
        return start, int(self._episode_ends[episode])

    def frames(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of the per-frame array `name` (e.g. "top_down/rgb", "action").

        Raises:
            StoreError: a chunk of those rows is missing or fails its checksum (naming the file and episode).
        """
        if name not in self.frame_fields:
            raise KeyError(f"no per-frame array {name!r}; the store has {', '.join(self.frame_fields)}")
        stop = self.num_frames if stop is None else min(stop, self.num_frames)
        return self._read(f"data/{name}", start, stop)

    def episode(self, episode: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """The per-frame arrays of one episode, (T+1, ...) each."""
        start, stop = self.episode_range(episode)
        return {name: self.frames(name, start, stop) for name in (names or self.frame_fields)}

    def episode_meta(self, name: str) -> np.ndarray:
        """The per-episode array `name` for all committed episodes, (E, ...)."""
        if name not in self.episode_fields:
            raise KeyError(f"no per-episode array {name!r}; the store has {', '.join(self.episode_fields)}")
        return self._read(f"meta/{name}", 0, self._num_episodes)

    def content_sha256(self) -> str:
        """Hex SHA-256 of every committed episode's content SHA-256, in order: the dataset's frames themselves, so
        a store collected anew at the same path, or grown by more episodes, differs."""
        return hashlib.sha256(self.episode_meta(CONTENT_HASH).tobytes()).hexdigest()

    def _read(self, array_path: str, start: int, stop: int) -> np.ndarray:
        try:
            return self._reader[array_path][start:stop]
        except Exception as error:  # a missing chunk, or a checksum / decompression failure inside zarr
            array = self._root[array_path]
            found = [
                (key, problem)
                for key, problem in _chunk_problems(self.path, array, stop, first_row=start, read=True)
                if problem is not None
            ]
            if not found:
                raise StoreError(f"{self.path}: reading {array_path} rows {start}..{stop} failed: {error}") from error
            raise StoreError(self._damage_message(found)) from error

    # -- checking ---------------------------------------------------------------------------------------
    def verify(self, progress: Callable[[Iterable[int]], Iterable[int]] = iter) -> StoreDamage:
        """Check the whole store: every chunk of the committed rows exists and passes its CRC-32C, and every
        episode's contents hash to its stored SHA-256. `progress` wraps the loop over episodes (e.g. tqdm).

        Returns:
            The damaged episodes with their problems and the damaged chunk files (empty when all is well).
        """
        episodes: dict[int, list[str]] = {}
        chunks: list[str] = []
        for array_path in self._array_paths():
            array = self._root[array_path]
            for key, problem in _chunk_problems(self.path, array, self._rows(array_path), read=True):
                if problem is None:
                    continue
                chunks.append(key)
                for episode in self._chunk_episodes(array, key):
                    episodes.setdefault(episode, []).append(f"{key}: {problem}")
        for episode in progress(range(self._num_episodes)):
            if episode in episodes:
                continue
            stored = self._read(f"meta/{CONTENT_HASH}", episode, episode + 1)[0]
            if not np.array_equal(self._content_hash(episode), stored):
                episodes[episode] = ["its rows differ from the SHA-256 written when it was collected (corrupt rows)"]
        return StoreDamage(episodes, sorted(chunks))

    def _content_hash(self, episode: int) -> np.ndarray:
        start, stop = self.episode_range(episode)
        parts = [(name, _digest(self._read(f"data/{name}", start, stop))) for name in sorted(self.frame_fields)]
        meta = sorted(set(self.episode_fields) - {"episode_ends", CONTENT_HASH})
        parts += [(name, _digest(self._read(f"meta/{name}", episode, episode + 1))) for name in meta]
        return _content_hash(parts)

    def _array_paths(self) -> list[str]:
        return [f"data/{name}" for name in self.frame_fields] + [f"meta/{name}" for name in self.episode_fields]

    def _damaged_chunks(self) -> list[tuple[str, str]]:
        """(key, problem) of the chunk files of the committed rows that are missing, and of those that fail their
        CRC-32C among the arrays of few chunks (the small per-frame and per-episode arrays)."""
        found = []
        for array_path in self._array_paths():
            array = self._root[array_path]
            found += [(k, p) for k, p in _chunk_problems(self.path, array, self._rows(array_path)) if p is not None]
        return found

    def _rows(self, array_path: str) -> int:
        """Committed rows of an array: episodes for `meta/`, frames for `data/`."""
        return self._num_episodes if array_path.startswith("meta/") else self.num_frames

    def _chunk_episodes(self, array: zarr.Array, key: str) -> range:
        """The episodes with rows in the chunk file `key` of `array`."""
        index = int(re.split(r"[./]", key[len(array.path) + 1 :])[1])
        first, last = index * array.chunks[0], (index + 1) * array.chunks[0]
        if array.path.startswith("meta/"):
            return range(first, min(last, self._num_episodes))
        begin = int(np.searchsorted(self._episode_ends, first, side="right"))
        end = int(np.searchsorted(self._episode_ends, min(last, self.num_frames), side="left")) + 1
        return range(begin, min(end, self._num_episodes))

    def _damage_message(self, found: list[tuple[str, str]]) -> str:
        episodes = sorted({e for key, _ in found for e in self._chunk_episodes(self._root[_array_of(key)], key)})
        shown = ", ".join(f"{key} {problem}" for key, problem in found[:3])
        more = f" and {len(found) - 3} more chunk files" if len(found) > 3 else ""
        span = (
            f"episode {episodes[0]}"
            if len(episodes) == 1
            else f"{len(episodes)} episodes ({episodes[0]}..{episodes[-1]})"
        )
        return (
            f"{self.path} is damaged: {shown}{more}, in {span}. "
            f"`keydyn dataset verify {self.path}` lists every damaged episode; `keydyn collect --resume --out "
            f"{self.path}` with the settings it was collected with re-collects them"
        )

    # -- writing ----------------------------------------------------------------------------------------
    def update_attrs(self, values: Mapping[str, Any]) -> None:
        self._require_writable()
        self._root.attrs.update(dict(values))

    def reserve(self, frames: int, episodes: int) -> None:
        """Grow every per-frame array to at least `frames` rows and every per-episode array to `episodes`, one
        resize each, so that appends within them resize nothing (a resize rewrites an array's metadata: about
        a fifth of an append's time). The reserved rows lie past the committed end, where readers never look;
        `trim` gives them back, and opening with mode="a" drops them after an interrupted run."""
        self._require_writable()
        for array_path in self._array_paths():
            array, rows = self._writer(array_path), episodes if array_path.startswith("meta/") else frames
            if array.shape[0] < rows:
                array.resize((rows, *array.shape[1:]))

    def trim(self) -> None:
        """Shrink every array to the committed rows (deleting the chunk files past them)."""
        self._require_writable()
        for array_path in self._array_paths():
            array = self._writer(array_path)
            if array.shape[0] != self._rows(array_path):
                array.resize((self._rows(array_path), *array.shape[1:]))

    def append_episode(self, frames: Mapping[str, np.ndarray | EncodedFrames], meta: Mapping[str, Any]) -> None:
        """Append one episode atomically.

        Args:
            frames: every per-frame array of the store, each (T+1, ...) with the same T+1 >= 1; image arrays
                may come pre-compressed by `encode_frames`.
            meta: every per-episode field except episode_ends and content_sha256.
        """
        self._require_writable()
        length = self._check_episode(frames, meta)
        start, episode = self.num_frames, self._num_episodes
        self._write_rows(frames, meta, start, length, episode, grow=True)
        self._root.attrs["num_episodes"] = episode + 1  # the commit
        self._num_episodes = episode + 1
        self._episode_ends = np.append(self._episode_ends, start + length)

    def rewrite_episode(
        self, episode: int, frames: Mapping[str, np.ndarray | EncodedFrames], meta: Mapping[str, Any]
    ) -> None:
        """Write a committed episode's rows again in place (the repair of a damaged episode); the new episode
        must have the stored one's length. A kill midway leaves it damaged, for `verify` to find again."""
        self._require_writable()
        start, stop = self.episode_range(episode)
        length = self._check_episode(frames, meta)
        if length != stop - start:
            raise StoreError(
                f"{self.path}: episode {episode} was re-collected with {length} frames but holds {stop - start}; "
                "it was collected with other settings or another keydyn version: re-collect into a new --out"
            )
        self._write_rows(frames, meta, start, length, episode, grow=False)

    def discard_chunks(self, keys: Iterable[str]) -> None:
        """Delete damaged chunk files (from `verify`) so that the episodes rewritten into them start afresh."""
        self._require_writable()
        for key in keys:
            (self.path / key).unlink(missing_ok=True)

    def _check_episode(self, frames: Mapping[str, np.ndarray | EncodedFrames], meta: Mapping[str, Any]) -> int:
        missing = set(self.frame_fields) - set(frames)
        if missing:
            raise ValueError(f"episode lacks per-frame arrays {sorted(missing)}")
        lengths = {name: len(frames[name]) for name in self.frame_fields}
        length = lengths[self.frame_fields[0]]
        if length < 1 or len(set(lengths.values())) != 1:
            raise ValueError(f"per-frame arrays of an episode must share one non-zero length, got {lengths}")
        meta_fields = [f for f in self.episode_fields if f not in ("episode_ends", CONTENT_HASH)]
        if set(meta) != set(meta_fields):
            raise ValueError(f"episode metadata must have exactly {sorted(meta_fields)}, got {sorted(meta)}")
        for name in meta_fields:
            _require_finite(np.asarray(meta[name])[None], f"episode metadata {name}:")
        for name in self.frame_fields:
            values = frames[name]
            if not isinstance(values, EncodedFrames) and not name.endswith("/depth"):  # depth alone has holes
                _require_finite(np.asarray(values), f"{name}: frames")
            shape = values.frame_shape if isinstance(values, EncodedFrames) else np.shape(values)[1:]
            array = self._writer(f"data/{name}")
            stored = array.shape[1:]
            if tuple(shape) != stored:
                raise ValueError(f"{name}: frames of shape {tuple(shape)}, the store holds {stored}")
            if isinstance(values, EncodedFrames) and (
                array.chunks != (1, *stored) or np.dtype(values.dtype) != array.dtype
            ):
                raise ValueError(
                    f"{array.path}: pre-encoded frames need one-frame chunks of {array.dtype}, the array has chunks "
                    f"{array.chunks} of {array.dtype}; pass the raw frames instead"
                )
        return length

    def _write_rows(
        self,
        frames: Mapping[str, np.ndarray | EncodedFrames],
        meta: Mapping[str, Any],
        start: int,
        length: int,
        episode: int,
        grow: bool,
    ) -> None:
        """Write an episode's rows into every array, the arrays side by side in threads (each write waits mostly on
        the file system); the caller commits once all are written."""
        parts, writes = [], []
        for name in sorted(self.frame_fields):
            array, values = self._writer(f"data/{name}"), frames[name]
            if isinstance(values, EncodedFrames):
                parts.append((name, values.sha256))
            else:
                values = np.asarray(values, dtype=array.dtype)
                parts.append((name, _digest(values)))
            writes.append((array, (start + length, *array.shape[1:]), slice(start, start + length), values))
        rows = {"episode_ends": start + length, **dict(meta)}
        for name in sorted(set(rows) - {"episode_ends"}):
            parts.append((name, _digest(np.asarray(rows[name], dtype=self._writer(f"meta/{name}").dtype)[None])))
        rows[CONTENT_HASH] = _content_hash(parts)
        for name, value in rows.items():
            array = self._writer(f"meta/{name}")
            writes.append((array, (episode + 1, *array.shape[1:]), episode, value))

        def write(array: zarr.Array, shape: tuple[int, ...], rows: slice | int, values: Any) -> None:
            if grow and array.shape[0] < shape[0]:  # not when `reserve` made room
                array.resize(shape)
            if isinstance(values, EncodedFrames):
                self._write_encoded(array, rows.start, values, in_place=not grow)
            else:
                array[rows] = values

        if self._write_pool is None:
            self._write_pool = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="keydyn-store")
        futures = [self._write_pool.submit(write, *job) for job in writes]
        try:
            wait(futures)  # all of them, also when one failed, before the caller goes on
        except BaseException:  # interrupted (Ctrl-C): no write may outlive the call, nor the caller's lock
            wait(futures)
            raise
        for future in futures:
            future.result()

    def close(self) -> None:
        """Stop the writer threads (after their writes); a later write starts them again. Reading needs none."""
        if self._write_pool is not None:
            self._write_pool.shutdown(wait=True)
            self._write_pool = None

    def _writer(self, array_path: str) -> zarr.Array:
        """An array of the store that writes every chunk, also one that equals the fill value (a chunk file
        missing from the committed rows then always means damage). Opened once per store: reading an array's
        metadata costs about a millisecond, and an episode writes some twenty arrays."""
        if array_path not in self._writers:
            self._writers[array_path] = self._root[array_path].with_config({"write_empty_chunks": True})
        return self._writers[array_path]

    def _write_encoded(self, array: zarr.Array, start: int, values: EncodedFrames, in_place: bool) -> None:
        """Write pre-encoded one-frame chunks for rows start.. directly as chunk files (through zarr's async store
        a file costs ~5x more). Rows being appended are read by no one before the commit, so their files are
        written straight; rows rewritten `in_place` (a repair) go through a temporary file and a rename, as
        zarr's LocalStore writes."""
        zeros = (0,) * (array.ndim - 1)
        directory = self.path / array.path
        for k, chunk in enumerate(values.chunks):
            target = directory / array.metadata.encode_chunk_key((start + k, *zeros))
            if not in_place:
                target.write_bytes(chunk)
                continue
            temporary = target.with_name(target.name + ".partial")
            temporary.write_bytes(chunk)
            os.replace(temporary, target)

    def _require_writable(self) -> None:
        if not self._writable:
            raise StoreError(f"{self.path} was opened read-only; open it with mode='a' to write")


def _require_finite(rows: np.ndarray, what: str) -> None:
    """Refuse float `rows` (N, ...) holding NaN or inf, naming the first rows: a dataset holds no unknown values
    but depth's holes.

    Raises:
        ValueError: `what` and the rows.
    """
    if rows.dtype.kind not in "fc" or np.isfinite(rows).all():
        return
    bad = np.flatnonzero(~np.isfinite(rows.reshape(len(rows), -1)).all(axis=1))
    raise ValueError(
        f"{what} rows {bad[:5].tolist()} of the episode hold NaN or inf; a dataset stores only finite values "
        "(depth alone may have holes): check the simulator's state or the robot's readings"
    )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _array_of(key: str) -> str:
    """The array path of a chunk file key ("data/top_down/rgb/c.3.0.0.0" -> "data/top_down/rgb")."""
    return key.rsplit("/c", 1)[0] if "/c/" in key else key.rsplit("/", 1)[0]


def _chunk_problems(
    path: Path, array: zarr.Array, stop: int, first_row: int = 0, read: bool = False
) -> Iterable[tuple[str, str | None]]:
    """(chunk file key, problem or None) for every chunk of `array` holding rows [first_row, stop): "missing",
    or with `read` (and always for a file that exists when only a few chunks are asked for) a failed CRC-32C."""
    step = array.chunks[0]
    zeros = (0,) * (array.ndim - 1)
    indices = range(first_row // step, -(-stop // step))
    read = read or len(indices) <= 64
    directory = path / array.path
    listing = set(os.listdir(directory)) if directory.is_dir() and len(indices) > 64 else None
    for index in indices:
        name = array.metadata.encode_chunk_key((index, *zeros))
        key = f"{array.path}/{name}"
        file = directory / name
        exists = (name in listing) if listing is not None and "/" not in name else file.is_file()
        if not exists:
            yield key, "missing"
        elif read:
            yield key, _checksum_problem(file.read_bytes())
        else:
            yield key, None

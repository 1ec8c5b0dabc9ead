"""The episode store: episodes concatenated along time in a zarr v3 group (layout in docs/dataset.md).

Writes are crash-safe. Every zarr key is written atomically (temporary file + rename); an episode becomes
part of the store only when the root attribute `num_episodes` is rewritten after all of its rows, so a
process killed at any moment leaves at most rows past the committed end, which readers ignore and
`open(..., mode="a")` truncates.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BloscShuffle

import keydyn

FORMAT = "keydyn-episodes"
FORMAT_VERSION = 1
_ROWS_PER_CHUNK = 4096  # for small per-frame arrays (actions, poses, states)


class StoreError(RuntimeError):
    """A dataset store that cannot be used: missing, corrupt, incompatible or misused."""


_CNAME, _CLEVEL = "zstd", 3  # lossless; ~20x smaller than raw images at ~1 ms per 320x240 RGB-D frame


def _compressor(dtype: np.dtype) -> BloscCodec:
    shuffle = BloscShuffle.bitshuffle if np.dtype(dtype).itemsize > 1 else BloscShuffle.shuffle
    return BloscCodec(cname=_CNAME, clevel=_CLEVEL, shuffle=shuffle)


@dataclass(frozen=True)
class EncodedFrames:
    """Image frames already compressed into the store's chunk encoding (one chunk per frame).

    Compressing is the costly part of writing images, so collection workers do it in parallel and the
    writing process only stores the bytes. Attributes: `frame_shape` and `dtype` of one frame; `chunks`,
    one Blosc frame of the little-endian C-order bytes per frame.
    """

    frame_shape: tuple[int, ...]
    dtype: str
    chunks: tuple[bytes, ...]

    def __len__(self) -> int:
        return len(self.chunks)


def encode_frames(frames: np.ndarray) -> EncodedFrames:
    """Compress (T, ...) image frames, one chunk each, exactly as the store's image arrays are encoded."""
    frames = np.asarray(frames)
    shuffle = Blosc.BITSHUFFLE if frames.dtype.itemsize > 1 else Blosc.SHUFFLE
    codec = Blosc(cname=_CNAME, clevel=_CLEVEL, shuffle=shuffle)
    little = frames.astype(frames.dtype.newbyteorder("<"), copy=False)
    chunks = tuple(bytes(codec.encode(np.ascontiguousarray(frame))) for frame in little)
    return EncodedFrames(tuple(frames.shape[1:]), frames.dtype.str.lstrip("<>|="), chunks)


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
        if path.exists() and any(path.iterdir()):
            raise StoreError(
                f"{path} already exists and is not empty; pass --resume to continue the collection stored "
                "there, or choose another --out"
            )
        try:
            json.dumps(dict(attributes))
        except TypeError as error:
            raise StoreError(f"store attributes must be JSON-serialisable: {error}") from error
        # Built beside its destination and renamed into place, so a kill during creation leaves no store.
        building = path.with_name(f".{path.name}.creating")
        if building.exists():
            shutil.rmtree(building)
        root = zarr.open_group(str(building), mode="w", zarr_format=3)
        for name, (shape, dtype) in frame_fields.items():
            root.create_array(
                f"data/{name}",
                shape=(0, *shape),
                chunks=_frame_chunks(tuple(shape)),
                dtype=dtype,
                compressors=_compressor(np.dtype(dtype)),
                fill_value=0,
                chunk_key_encoding={"name": "default", "separator": "."},  # flat: no directory per frame
            )
        fields = {"episode_ends": ((), "int64"), **dict(episode_fields)}
        for name, (shape, dtype) in fields.items():
            root.create_array(
                f"meta/{name}",
                shape=(0, *shape),
                chunks=(1024, *shape),
                dtype=dtype,
                compressors=_compressor(np.dtype(dtype)),
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
        if path.exists():
            path.rmdir()  # empty, checked above
        os.replace(building, path)
        root = zarr.open_group(str(path), mode="r+", zarr_format=3)
        return cls(path, root, writable=True)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> EpisodeStore:
        """Open and validate a store; mode "r" reads, "a" appends (and drops any uncommitted rows).

        Raises:
            StoreError: the path is missing, not a keydyn store, of another format version, or corrupt.
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
                f"{FORMAT_VERSION}. Re-collect it with this version or use the keydyn that wrote it "
                f"({attrs.get('keydyn_version')})."
            )
        cls._validate(path, root, attrs)
        store = cls(path, root, writable=mode == "a")
        if mode == "a":
            store._truncate_uncommitted()
        return store

    @staticmethod
    def _validate(path: Path, root: zarr.Group, attrs: dict[str, Any]) -> None:
        n = attrs.get("num_episodes")
        if not isinstance(n, int) or n < 0:
            raise StoreError(f"{path}: attribute num_episodes={n!r} is invalid; the store is corrupt")
        try:
            meta = {name: root[f"meta/{name}"] for name in attrs["episode_fields"]}
            data = {name: root[f"data/{name}"] for name in attrs["frame_fields"]}
        except KeyError as error:
            raise StoreError(f"{path}: array {error} is missing; the store is corrupt or incomplete") from error
        for name, array in meta.items():
            if array.shape[0] < n:
                raise StoreError(f"{path}: meta/{name} has {array.shape[0]} rows for {n} episodes; corrupt store")
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
        frames = self.num_frames
        for name in self.frame_fields:
            array = self._root[f"data/{name}"]
            if array.shape[0] != frames:
                array.resize((frames, *array.shape[1:]))
        for name in self.episode_fields:
            array = self._root[f"meta/{name}"]
            if array.shape[0] != self._num_episodes:
                array.resize((self._num_episodes, *array.shape[1:]))
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

    def episode_range(self, episode: int) -> tuple[int, int]:
        """[start, end) frame indices of `episode`."""
        if not 0 <= episode < self._num_episodes:
            raise IndexError(f"episode {episode} out of range: the store has {self._num_episodes} episodes")
        start = int(self._episode_ends[episode - 1]) if episode else 0
        return start, int(self._episode_ends[episode])

    def frames(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of the per-frame array `name` (e.g. "top_down/rgb", "action")."""
        if name not in self.frame_fields:
            raise KeyError(f"no per-frame array {name!r}; the store has {', '.join(self.frame_fields)}")
        stop = self.num_frames if stop is None else min(stop, self.num_frames)
        return self._root[f"data/{name}"][start:stop]

    def episode(self, episode: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """The per-frame arrays of one episode, (T+1, ...) each."""
        start, stop = self.episode_range(episode)
        return {name: self.frames(name, start, stop) for name in (names or self.frame_fields)}

    def episode_meta(self, name: str) -> np.ndarray:
        """The per-episode array `name` for all committed episodes, (E, ...)."""
        if name not in self.episode_fields:
            raise KeyError(f"no per-episode array {name!r}; the store has {', '.join(self.episode_fields)}")
        return self._root[f"meta/{name}"][: self._num_episodes]

    # -- writing ----------------------------------------------------------------------------------------
    def update_attrs(self, values: Mapping[str, Any]) -> None:
        self._require_writable()
        self._root.attrs.update(dict(values))

    def append_episode(self, frames: Mapping[str, np.ndarray | EncodedFrames], meta: Mapping[str, Any]) -> None:
        """Append one episode atomically.

        Args:
            frames: every per-frame array of the store, each (T+1, ...) with the same T+1 >= 1; image arrays
                may come pre-compressed by `encode_frames`.
            meta: every per-episode field except episode_ends.
        """
        self._require_writable()
        missing = set(self.frame_fields) - set(frames)
        if missing:
            raise ValueError(f"episode lacks per-frame arrays {sorted(missing)}")
        lengths = {name: len(frames[name]) for name in self.frame_fields}
        length = lengths[self.frame_fields[0]]
        if length < 1 or len(set(lengths.values())) != 1:
            raise ValueError(f"per-frame arrays of an episode must share one non-zero length, got {lengths}")
        meta_fields = [f for f in self.episode_fields if f != "episode_ends"]
        if set(meta) != set(meta_fields):
            raise ValueError(f"episode metadata must have exactly {sorted(meta_fields)}, got {sorted(meta)}")
        start = self.num_frames
        for name in self.frame_fields:
            array = self._root[f"data/{name}"]
            values = frames[name]
            shape = values.frame_shape if isinstance(values, EncodedFrames) else np.shape(values)[1:]
            if tuple(shape) != array.shape[1:]:
                raise ValueError(f"{name}: frames of shape {tuple(shape)}, the store holds {array.shape[1:]}")
            array.resize((start + length, *array.shape[1:]))
            if isinstance(values, EncodedFrames):
                self._write_encoded(array, start, values)
            else:
                array[start : start + length] = np.asarray(values)
        episode = self._num_episodes
        for name, value in {"episode_ends": start + length, **dict(meta)}.items():
            array = self._root[f"meta/{name}"]
            array.resize((episode + 1, *array.shape[1:]))
            array[episode] = value
        self._root.attrs["num_episodes"] = episode + 1  # the commit
        self._num_episodes = episode + 1
        self._episode_ends = np.append(self._episode_ends, start + length)

    def _write_encoded(self, array: zarr.Array, start: int, values: EncodedFrames) -> None:
        if array.chunks != (1, *array.shape[1:]) or np.dtype(values.dtype) != array.dtype:
            raise ValueError(
                f"{array.path}: pre-encoded frames need one-frame chunks of {array.dtype}, the array has chunks "
                f"{array.chunks} of {array.dtype}; pass the raw frames instead"
            )
        # The chunk files are written directly (as zarr's LocalStore would: temporary file, then rename);
        # going through zarr's async store costs ~5x more per file.
        zeros = (0,) * (array.ndim - 1)
        directory = self.path / array.path
        for k, chunk in enumerate(values.chunks):
            target = directory / array.metadata.encode_chunk_key((start + k, *zeros))
            temporary = target.with_name(target.name + ".partial")
            temporary.write_bytes(chunk)
            os.replace(temporary, target)

    def _require_writable(self) -> None:
        if not self._writable:
            raise StoreError(f"{self.path} was opened read-only; open it with mode='a' to write")

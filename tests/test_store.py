"""The zarr episode store: round trip, atomic commits, validation and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keydyn.data.store import EpisodeStore, StoreError, encode_frames

FRAME_FIELDS = {
    "action": ((2,), "float32"),
    "cam/rgb": ((6, 8, 3), "uint8"),
    "cam/depth": ((6, 8), "float32"),
}
EPISODE_FIELDS = {"seed": ((), "int64")}


def _episode(rng: np.random.Generator, length: int, encoded: bool) -> dict:
    frames = {
        "action": rng.normal(size=(length, 2)).astype(np.float32),
        "cam/rgb": rng.integers(0, 256, size=(length, 6, 8, 3), dtype=np.uint8),
        "cam/depth": rng.uniform(0.5, 2.0, size=(length, 6, 8)).astype(np.float32),
    }
    if encoded:
        frames = {k: encode_frames(v) if v.ndim >= 3 else v for k, v in frames.items()}
    return frames


def test_round_trip_raw_and_pre_encoded_frames(tmp_path):
    store = EpisodeStore.create(tmp_path / "s", {"task": "unit"}, FRAME_FIELDS, EPISODE_FIELDS)
    rng = np.random.default_rng(0)
    written = []
    for k, (length, encoded) in enumerate([(5, False), (3, True), (7, True)]):
        episode = _episode(np.random.default_rng(k), length, encoded)
        store.append_episode(episode, {"seed": 100 + k})
        written.append(_episode(np.random.default_rng(k), length, False))
    del rng
    reopened = EpisodeStore.open(tmp_path / "s")
    assert reopened.num_episodes == 3
    assert reopened.episode_ends.tolist() == [5, 8, 15]
    assert reopened.episode_meta("seed").tolist() == [100, 101, 102]
    assert reopened.attrs["task"] == "unit"
    for k, expected in enumerate(written):
        got = reopened.episode(k)
        for name, values in expected.items():
            assert np.array_equal(got[name], values), name
            assert got[name].dtype == values.dtype


def test_uncommitted_rows_are_invisible_and_dropped_on_append(tmp_path):
    store = EpisodeStore.create(tmp_path / "s", {}, FRAME_FIELDS, EPISODE_FIELDS)
    store.append_episode(_episode(np.random.default_rng(0), 4, False), {"seed": 1})
    # Simulate a process killed after writing rows of a second episode but before the commit.
    import zarr

    root = zarr.open_group(str(tmp_path / "s"), mode="r+")
    root["data/action"].resize((9, 2))
    root["data/action"][4:9] = 7.0
    root["meta/seed"].resize((2,))
    (tmp_path / "s" / "data" / "cam" / "rgb" / "c.5.0.0.0.partial").write_bytes(b"torn")
    reader = EpisodeStore.open(tmp_path / "s")
    assert reader.num_episodes == 1 and reader.num_frames == 4
    assert reader.frames("action").shape == (4, 2)
    writer = EpisodeStore.open(tmp_path / "s", mode="a")
    assert root["data/action"].shape == (4, 2) and root["meta/seed"].shape == (1,)
    assert not list((tmp_path / "s").rglob("*.partial"))
    writer.append_episode(_episode(np.random.default_rng(1), 2, True), {"seed": 2})
    assert EpisodeStore.open(tmp_path / "s").episode_ends.tolist() == [4, 6]


def test_reserved_rows_cost_no_resizes_and_are_given_back(tmp_path):
    import zarr

    store = EpisodeStore.create(tmp_path / "s", {}, FRAME_FIELDS, EPISODE_FIELDS)
    store.reserve(frames=20, episodes=4)
    root = zarr.open_group(str(tmp_path / "s"), mode="r")
    assert root["data/cam/rgb"].shape == (20, 6, 8, 3) and root["meta/seed"].shape == (4,)
    written = [_episode(np.random.default_rng(k), length, True) for k, length in enumerate([5, 3])]
    for k, episode in enumerate(written):
        store.append_episode(episode, {"seed": k})
    metadata = tmp_path / "s" / "data" / "cam" / "rgb" / "zarr.json"
    assert json.loads(metadata.read_text())["shape"][0] == 20  # the appends resized nothing
    # A reader sees the committed episodes only; so does a writer resuming after a kill, which drops the rest.
    reader = EpisodeStore.open(tmp_path / "s")
    assert reader.num_frames == 8 and reader.frames("action").shape == (8, 2)
    assert np.array_equal(reader.episode(1)["cam/rgb"], _episode(np.random.default_rng(1), 3, False)["cam/rgb"])
    store.close()
    resumed = EpisodeStore.open(tmp_path / "s", mode="a")
    assert json.loads(metadata.read_text())["shape"][0] == 8
    assert zarr.open_group(str(tmp_path / "s"), mode="r")["meta/seed"].shape == (2,)
    resumed.append_episode(_episode(np.random.default_rng(2), 2, False), {"seed": 2})  # grows, nothing reserved
    resumed.reserve(frames=30, episodes=5)
    resumed.trim()
    assert json.loads(metadata.read_text())["shape"][0] == 10
    assert EpisodeStore.open(tmp_path / "s").episode_ends.tolist() == [5, 8, 10]


def test_opening_a_missing_or_foreign_path_names_the_problem(tmp_path):
    with pytest.raises(StoreError, match="not a keydyn dataset"):
        EpisodeStore.open(tmp_path / "nothing")
    import zarr

    zarr.open_group(str(tmp_path / "other"), mode="w").attrs["hello"] = 1
    with pytest.raises(StoreError, match="not a keydyn episode store"):
        EpisodeStore.open(tmp_path / "other")


def _stored(tmp_path):
    store = EpisodeStore.create(tmp_path / "s", {}, FRAME_FIELDS, EPISODE_FIELDS)
    store.append_episode(_episode(np.random.default_rng(0), 4, False), {"seed": 1})
    return tmp_path / "s"


def test_corrupt_stores_get_clear_errors(tmp_path):
    path = _stored(tmp_path)
    meta_file = path / "zarr.json"
    original = json.loads(meta_file.read_text())

    bumped = json.loads(json.dumps(original))
    bumped["attributes"]["format_version"] = 99
    meta_file.write_text(json.dumps(bumped))
    with pytest.raises(StoreError, match="format version 99"):
        EpisodeStore.open(path)

    meta_file.write_text("{ not json")
    with pytest.raises(StoreError, match="corrupt"):
        EpisodeStore.open(path)

    meta_file.write_text(json.dumps(original))
    import shutil

    shutil.rmtree(path / "data" / "cam" / "depth")
    with pytest.raises(StoreError, match="missing"):
        EpisodeStore.open(path)


def test_shorter_data_than_committed_episodes_is_corrupt(tmp_path):
    path = _stored(tmp_path)
    import zarr

    zarr.open_group(str(path), mode="r+")["data/action"].resize((2, 2))
    with pytest.raises(StoreError, match="data/action has 2 frames but the episodes need 4"):
        EpisodeStore.open(path)


def test_misuse_is_rejected(tmp_path):
    path = _stored(tmp_path)
    with pytest.raises(StoreError, match="already exists"):
        EpisodeStore.create(path, {}, FRAME_FIELDS, EPISODE_FIELDS)
    reader = EpisodeStore.open(path)
    with pytest.raises(StoreError, match="read-only"):
        reader.append_episode(_episode(np.random.default_rng(0), 2, False), {"seed": 3})
    writer = EpisodeStore.open(path, mode="a")
    bad = _episode(np.random.default_rng(0), 2, False)
    bad["action"] = bad["action"][:1]
    with pytest.raises(ValueError, match="share one non-zero length"):
        writer.append_episode(bad, {"seed": 3})
    with pytest.raises(ValueError, match="exactly"):
        writer.append_episode(_episode(np.random.default_rng(0), 2, False), {})
    unknown = _episode(np.random.default_rng(0), 4, False)
    unknown["action"][2, 1] = np.nan
    unknown["cam/depth"][:, 0, 0] = np.nan  # a depth hole is allowed
    with pytest.raises(ValueError, match=r"action: frames rows \[2\] of the episode hold NaN or inf"):
        writer.append_episode(unknown, {"seed": 3})
    unknown["action"][2, 1] = 0.0
    with pytest.raises(ValueError, match="episode metadata seed: rows"):
        EpisodeStore.create(tmp_path / "floats", {}, FRAME_FIELDS, {"seed": ((), "float64")}).append_episode(
            unknown, {"seed": np.inf}
        )
    episodes = writer.num_episodes
    writer.append_episode(unknown, {"seed": 3})  # with the depth hole only
    assert writer.num_episodes == episodes + 1
    with pytest.raises(IndexError, match="out of range"):
        writer.episode(5)
    with pytest.raises(KeyError, match="no per-frame array"):
        writer.frames("nope")

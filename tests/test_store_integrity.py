"""Damage to a dataset is found and named, never read as data: missing and corrupt chunks, rows that differ from
their episode's hash; `keydyn collect --resume` mends it; one writer at a time; workers bounded and tied to
their parent."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from keydyn import workers
from keydyn.cli import main
from keydyn.data.collect import collect
from keydyn.data.store import EpisodeStore, StoreError
from keydyn.locks import DirectoryBusyError, DirectoryLock
from keydyn.sim.config import task_config
from keydyn.workers import MEMORY_PER_WORKER, usable_cpus, worker_count

from .conftest import small_collect_config
from .test_collect import _assert_same_store


@pytest.fixture
def damaged(small_dataset, tmp_path) -> Path:
    """A copy of the 3-episode dataset to damage."""
    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    return copy


def _image_chunk(store: Path, camera_field: str, frame: int) -> Path:
    return store / "data" / camera_field / f"c.{frame}.0.0{'.0' if camera_field.endswith('rgb') else ''}"


def test_a_missing_chunk_is_named_never_read_as_zeros(damaged, capsys):
    (damaged / "data" / "action" / "c.0.0").unlink()
    with pytest.raises(StoreError, match=r"data/action/c\.0\.0 missing, in 3 episodes \(0\.\.2\).*collect --resume"):
        EpisodeStore.open(damaged)
    store = EpisodeStore.open(damaged, check_chunks=False)
    with pytest.raises(StoreError, match=r"data/action/c\.0\.0 missing"):
        store.frames("action")  # a read after opening is checked too
    assert main(["dataset", "info", str(damaged)]) == 2
    assert main(["train-dynamics", "--dataset", str(damaged), "--out", str(damaged.parent / "run")]) == 2
    assert "data/action/c.0.0 missing" in capsys.readouterr().err


def test_a_truncated_or_flipped_chunk_fails_its_checksum_with_the_episode_named(damaged, capsys):
    store = EpisodeStore.open(damaged)
    start, stop = store.episode_range(1)
    chunk = _image_chunk(damaged, "top_down/rgb", start + 2)
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])  # truncated
    flipped = _image_chunk(damaged, "top_down/depth", stop)  # first frame of episode 2
    raw = bytearray(flipped.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    flipped.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="checksum mismatch"):
        EpisodeStore.open(damaged)  # a small store's chunks are all checked on opening
    store = EpisodeStore.open(damaged, check_chunks=False)  # a large one's (images) as they are read
    with pytest.raises(StoreError, match=rf"c\.{start + 2}\.0\.0\.0 checksum mismatch .* in episode 1\b"):
        store.episode(1)
    assert store.frames("top_down/rgb", start, start + 2).shape[0] == 2  # the rest reads
    assert main(["dataset", "verify", str(damaged), "--no-progress"]) == 2
    output = capsys.readouterr()
    assert "episode 1: data/top_down/rgb" in output.out and "episode 2: data/top_down/depth" in output.out
    assert "episode 0" not in output.out
    assert "2 of 3 episodes are damaged" in output.err


def test_rows_that_differ_from_their_hash_are_found(damaged):
    start, _ = EpisodeStore.open(damaged).episode_range(2)
    first, second = _image_chunk(damaged, "top_down/rgb", start), _image_chunk(damaged, "top_down/rgb", start + 1)
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)  # two valid chunks swapped: every checksum passes
    second.write_bytes(a)
    store = EpisodeStore.open(damaged)  # opens and reads: every checksum passes
    assert store.frames("top_down/rgb", start, start + 2).shape[0] == 2
    damage = store.verify()
    assert list(damage.episodes) == [2] and damage.chunks == []
    assert "differ from the SHA-256" in damage.episodes[2][0]


def test_collect_resume_recollects_damaged_episodes_bit_identically(small_dataset, damaged):
    (damaged / "data" / "object_position" / "c.0.0").unlink()
    store = EpisodeStore.open(damaged, check_chunks=False)
    start, _ = store.episode_range(1)
    chunk = _image_chunk(damaged, "top_down_rotated/rgb", start + 3)
    chunk.write_bytes(chunk.read_bytes()[:-9])
    collect(small_collect_config(damaged, resume=True))
    assert not EpisodeStore.open(damaged).verify()
    _assert_same_store(small_dataset, damaged)


def test_collect_resume_rewrites_only_the_damaged_episodes(small_dataset, damaged):
    store = EpisodeStore.open(damaged)
    (one_start, _), (two_start, _) = store.episode_range(1), store.episode_range(2)
    truncated = _image_chunk(damaged, "top_down/depth", one_start + 1)
    truncated.write_bytes(truncated.read_bytes()[:20])
    first, second = (
        _image_chunk(damaged, "top_down/rgb", two_start),
        _image_chunk(damaged, "top_down/rgb", two_start + 5),
    )
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)  # valid chunks in the wrong places: only the episode's hash tells
    second.write_bytes(a)
    untouched = _image_chunk(damaged, "top_down/rgb", 0)
    before = untouched.stat().st_mtime_ns
    assert sorted(EpisodeStore.open(damaged, check_chunks=False).verify().episodes) == [1, 2]
    collect(small_collect_config(damaged, resume=True))
    assert untouched.stat().st_mtime_ns == before  # episode 0 was not collected again
    assert not EpisodeStore.open(damaged).verify()
    _assert_same_store(small_dataset, damaged)


def test_collect_resume_mends_a_damaged_per_episode_array(small_dataset, damaged):
    (damaged / "meta" / "termination" / "c" / "0").unlink()
    with pytest.raises(StoreError, match=r"meta/termination/c/0 missing, in 3 episodes"):
        EpisodeStore.open(damaged)
    collect(small_collect_config(damaged, resume=True))
    _assert_same_store(small_dataset, damaged)


def test_damage_in_a_long_read_and_in_array_metadata_is_named(tmp_path):
    store = EpisodeStore.create(tmp_path / "s", {}, {"im": ((4, 4), "uint8")}, {})
    store.append_episode({"im": np.arange(100 * 16, dtype=np.uint8).reshape(100, 4, 4)}, {})
    chunk = tmp_path / "s" / "data" / "im" / "c.70.0.0"
    chunk.write_bytes(chunk.read_bytes()[:-1])
    with pytest.raises(StoreError, match=r"data/im/c\.70\.0\.0 checksum mismatch .* in episode 0"):
        EpisodeStore.open(tmp_path / "s").frames("im")  # 100 chunks: found when read, and named
    (tmp_path / "s" / "data" / "im" / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"data/im/zarr.json \(the array's metadata\) cannot be read"):
        EpisodeStore.open(tmp_path / "s")


def test_every_chunk_is_written_even_all_zero(tmp_path):
    store = EpisodeStore.create(tmp_path / "s", {}, {"a": ((2,), "float32"), "im": ((4, 4), "uint8")}, {})
    store.append_episode({"a": np.zeros((3, 2)), "im": np.zeros((3, 4, 4))}, {})
    assert (tmp_path / "s" / "data" / "a" / "c.0.0").is_file()
    assert all((tmp_path / "s" / "data" / "im" / f"c.{t}.0.0").is_file() for t in range(3))
    assert not EpisodeStore.open(tmp_path / "s").verify()


def test_one_collection_at_a_time_writes_a_store(small_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    busy = pytest.raises(DirectoryBusyError, match=rf"being written by process {os.getpid()} .*a test")
    with DirectoryLock(copy, "a test"), busy:
        collect(small_collect_config(copy, resume=True, episodes=4))
    assert EpisodeStore.open(copy).num_episodes == 3  # untouched by the refused writer
    collect(small_collect_config(copy, resume=True, episodes=3))  # free again once released


def test_a_full_disk_is_named_and_resumable(small_dataset, tmp_path, monkeypatch):
    out = tmp_path / "full"
    real = EpisodeStore.append_episode

    def fill_disk_after_one(store, frames, meta):
        if store.num_episodes >= 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "data"))
        real(store, frames, meta)

    monkeypatch.setattr(EpisodeStore, "append_episode", fill_disk_after_one)
    with pytest.raises(StoreError, match=r"no space left to write .*full .*MB free.*--resume"):
        collect(small_collect_config(out))
    monkeypatch.setattr(EpisodeStore, "append_episode", real)
    collect(small_collect_config(out, resume=True))
    _assert_same_store(small_dataset, out)


def test_bad_outputs_and_sizes_are_refused(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(StoreError, match="is a file, not a directory"):
        collect(small_collect_config(file))
    with pytest.raises(ValueError, match="too large: at most 2048"):
        task_config("top_down", width=8000, height=6000)
    with pytest.raises(SystemExit):
        main(["collect", "--width", "8000", "--height", "6000", "--out", str(tmp_path / "big")])


def test_worker_counts_are_bounded_by_the_work_and_the_machine(monkeypatch, capsys):
    monkeypatch.setattr(workers, "_available_memory", lambda: 64 * MEMORY_PER_WORKER)
    assert worker_count(100, 4) == min(4, usable_cpus())
    assert worker_count(3, 0) == 1
    assert 1 <= worker_count(10**6, 10**6) <= usable_cpus()
    monkeypatch.setattr(workers, "_available_memory", lambda: 3 * MEMORY_PER_WORKER + 1)
    assert worker_count(100, 100) == min(3, usable_cpus())  # as many as the memory holds
    monkeypatch.setattr(workers, "_available_memory", lambda: 0)
    assert worker_count(100, 100) == 1
    capsys.readouterr()
    assert worker_count(100, 4) == 1
    assert "starting 1 worker processes, not 100 (4 units of work" in capsys.readouterr().err


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


WORKER_SCRIPT = """
import os, sys, time
from pathlib import Path
from keydyn.cluster import map_units

def sleeper(directory):
    def work(item):
        (Path(directory) / str(os.getpid())).write_text("started")  # after the pool's initializer ran
        time.sleep(120)
    return work

if __name__ == "__main__":
    list(map_units(sleeper, sys.argv[1], range(2), workers=2))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or usable_cpus() < 2, reason="needs Linux and 2 CPUs")
def test_pool_workers_die_with_their_parent(tmp_path):
    script, started = tmp_path / "pool.py", tmp_path / "started"
    script.write_text(WORKER_SCRIPT)
    started.mkdir()
    process = subprocess.Popen([sys.executable, str(script), str(started)])
    deadline = time.time() + 120
    while time.time() < deadline and len(list(started.iterdir())) < 2:
        time.sleep(0.2)
    workers = [int(path.name) for path in started.iterdir()]
    assert len(workers) == 2, "the pool did not start"
    os.kill(process.pid, signal.SIGKILL)  # the workers sleep for 2 minutes: only the death signal ends them now
    process.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_running(w) for w in workers):
        time.sleep(0.1)
    alive = [w for w in workers if _running(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their parent"


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

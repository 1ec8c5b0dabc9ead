"""Parallel, resumable, deterministic collection of random-push episodes into an EpisodeStore.

Episode i is simulated from a seed derived from (seed, i, attempt) alone, and episodes are written in index
order, so a dataset is bit-identical whatever the number of workers and however often it was resumed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
from tqdm import tqdm

from keydyn.cluster import ClusterConfig, map_units, process_count
from keydyn.data.store import EpisodeStore, StoreError, encode_frames
from keydyn.files import disk_full_error, is_disk_full
from keydyn.locks import DirectoryLock
from keydyn.sim.config import TaskConfig, check_seed, task_config, task_names
from keydyn.sim.environment import PushingEnvironment, applied_action, make_environment
from keydyn.sim.policy import RandomPushConfig, RandomPushPolicy

TERMINATIONS = ("", "out_of_bounds", "tipped_over")  # meta/termination codes


@dataclass(frozen=True)
class EpisodeFilter:
    """Which episodes to keep. An episode ends early (the offending frame dropped) when the object or pusher
    nears the table edge or the object tips over; it is discarded, and re-drawn with the next attempt seed,
    if fewer than `min_steps` actions remain or the object moved less than `min_translation` metres and
    turned less than `min_rotation_deg` degrees."""

    min_steps: int = 10
    min_translation: float = 0.005
    min_rotation_deg: float = 3.0
    max_attempts: int = 50


@dataclass(frozen=True)
class CollectConfig:
    """Collect random-push episodes of a task into a zarr store."""

    out: Path
    """Directory of the new dataset (or of the one to resume)."""
    task: str = "top_down"
    """A task: top_down, angled, occlusions, mugs, or another registered one (keydyn.sim.task_names())."""
    episodes: int = 10
    """Number of episodes the dataset should hold."""
    steps: int = 40
    """Actions per episode (an episode stores steps + 1 observations unless it was cut short)."""
    seed: int = 0
    width: int = 320
    height: int = 240
    workers: int = 1
    """Parallel worker processes (the dataset does not depend on it); at most one per episode to collect and
    per usable CPU, and as many as the available memory allows (with --cluster.backend ray: Ray actors, at most
    one per CPU of the cluster). 1: collect in this process."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Where the workers run: this machine, or a Ray cluster (the episodes come back to this process, which
    writes the store)."""
    resume: bool = False
    """Continue an interrupted collection in --out (same task and settings); damaged episodes (see `keydyn
    dataset verify`) are collected again first."""
    policy: RandomPushConfig = field(default_factory=RandomPushConfig)
    filter: EpisodeFilter = field(default_factory=EpisodeFilter)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in task_names():
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(task_names())}")
        if self.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {self.episodes}")
        if self.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {self.steps}")
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        self.task_config()  # checks the image size
        check_seed(self.seed)
        if self.filter.min_steps > self.steps:
            raise ValueError(
                f"--filter.min-steps ({self.filter.min_steps}) exceeds --steps ({self.steps}): every episode "
                "would be discarded; lower --filter.min-steps"
            )

    def task_config(self) -> TaskConfig:
        return task_config(self.task, width=self.width, height=self.height)

    def identity(self) -> dict[str, Any]:
        """The settings a resumed collection must share with the stored one."""
        return {
            "task": self.task_config().to_dict(),
            "steps": self.steps,
            "seed": self.seed,
            "policy": dataclasses.asdict(self.policy),
            "filter": dataclasses.asdict(self.filter),
        }


def episode_seed(seed: int, episode: int, attempt: int) -> int:
    """The simulation seed of an attempt at an episode (a 63-bit int)."""
    return int(np.random.SeedSequence([seed, episode, attempt]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def field_specs(task: TaskConfig, state_size: int) -> tuple[dict, dict]:
    """(per-frame fields, per-episode fields) of a store for `task`: name -> (shape, dtype)."""
    h, w = task.height, task.width
    frame: dict[str, tuple[tuple[int, ...], str]] = {
        "action": ((2,), "float32"),
        "pusher_position": ((2,), "float32"),
        "pusher_velocity": ((2,), "float32"),
        "object_position": ((3,), "float64"),
        "object_quaternion": ((4,), "float64"),
        "object_yaw": ((), "float64"),
        "sim_state": ((state_size,), "float64"),
    }
    for name in task.camera_names:
        frame[f"{name}/rgb"] = ((h, w, 3), "uint8")
        frame[f"{name}/depth"] = ((h, w), "float32")
        frame[f"{name}/mask"] = ((h, w), "uint8")
    episode = {
        "seed": ((), "int64"),
        "attempts": ((), "int32"),
        "termination": ((), "int8"),
        "mug_instance": ((), "int32"),
        "mug_material": ((), "int32"),
        "mug_rgba": ((4,), "float32"),
    }
    return frame, episode


def simulate_episode(
    env: PushingEnvironment, policy_config: RandomPushConfig, steps: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run one random-push episode from `seed`.

    Returns:
        frames: per-frame arrays, (T+1, ...) each; `action[t]` is applied after frame t, the last action row
            is zero. T < steps when the episode ended early (the terminating frame is not included).
        meta: termination code and the mug's instance, material and colour.
    """
    obs, info = env.reset(seed=seed)
    policy = RandomPushPolicy(policy_config, np.random.default_rng(np.random.SeedSequence([seed, 1])))
    policy.reset(obs["pusher_position"], info["object_position"])
    records: list[tuple[dict[str, np.ndarray], dict[str, Any]]] = [(obs, info)]
    actions: list[np.ndarray] = []
    termination = ""
    for _ in range(steps):
        action = policy()
        obs, _, terminated, _, step_info = env.step(action)
        if terminated:
            termination = step_info["termination"]
            if termination not in TERMINATIONS[1:]:
                raise ValueError(
                    f"{type(env).__name__} ended an episode with termination {termination!r}, which a dataset cannot "
                    f"record: an environment names one of {', '.join(TERMINATIONS[1:])} (keydyn.sim.environment)"
                )
            break
        actions.append(applied_action(action, env.task).astype(np.float32))  # the velocity applied
        records.append((obs, step_info))
    actions.append(np.zeros(2, dtype=np.float32))
    frames: dict[str, np.ndarray] = {"action": np.stack(actions)}
    for key in ("pusher_position", "pusher_velocity"):
        frames[key] = np.stack([o[key] for o, _ in records])
    for key in ("object_position", "object_quaternion", "object_yaw", "sim_state"):
        frames[key] = np.stack([np.asarray(i[key]) for _, i in records])
    for name in env.task.camera_names:
        for kind in ("rgb", "depth", "mask"):
            frames[f"{name}/{kind}"] = np.stack([o[f"{name}/{kind}"] for o, _ in records])
    meta = {
        "termination": TERMINATIONS.index(termination),
        "mug_instance": info["mug_instance"],
        "mug_material": info["mug_material"],
        "mug_rgba": info["mug_rgba"],
    }
    return frames, meta


def episode_is_kept(frames: dict[str, np.ndarray], rule: EpisodeFilter) -> bool:
    """Whether an episode has enough steps and object motion to be kept."""
    if len(frames["action"]) - 1 < rule.min_steps:
        return False
    position = frames["object_position"]
    translation = float(np.max(np.linalg.norm(position[:, :2] - position[0, :2], axis=1)))
    yaw = frames["object_yaw"]
    rotation = float(np.max(np.abs(np.angle(np.exp(1j * (yaw - yaw[0]))))))
    return translation >= rule.min_translation or rotation >= math.radians(rule.min_rotation_deg)


def collect_episode(env: PushingEnvironment, config: CollectConfig, index: int) -> tuple[dict, dict]:
    """Episode `index` of the dataset: the first attempt that passes the filter."""
    for attempt in range(config.filter.max_attempts):
        seed = episode_seed(config.seed, index, attempt)
        frames, meta = simulate_episode(env, config.policy, config.steps, seed)
        if episode_is_kept(frames, config.filter):
            return frames, {**meta, "seed": seed, "attempts": attempt + 1}
    raise RuntimeError(
        f"episode {index}: no attempt out of {config.filter.max_attempts} passed the episode filter "
        f"{config.filter}; loosen --filter.* or check the task's start distribution"
    )


class EpisodeWorker:
    """A collection worker: the task's environment, built once per process; called with an episode index, it
    returns the episode with its images compressed (where it was simulated).

    job: the settings and the task they resolve to in the launching process, passed whole: a spawned process or
    Ray actor knows only the built-in tasks, not one registered by the script that launched it."""

    def __init__(self, job: tuple[CollectConfig, TaskConfig]) -> None:
        self.config, task = job
        self.env = make_environment(task)

    def __call__(self, index: int) -> tuple[dict, dict]:
        frames, meta = collect_episode(self.env, self.config, index)
        return {k: encode_frames(v) if v.ndim >= 3 else v for k, v in frames.items()}, meta

    def close(self) -> None:
        self.env.close()


def _episodes(config: CollectConfig, indices: Sequence[int]) -> Iterator[tuple[dict, dict]]:
    """Episodes `indices` in order, simulated by up to `config.workers` processes (`keydyn.cluster.process_count`;
    one runs them in this process)."""
    workers = process_count(config.workers, len(indices), config.cluster)
    job = (config, config.task_config())
    if workers == 1:
        worker = EpisodeWorker(job)
        try:
            yield from map(worker, indices)
        finally:
            worker.close()
        return
    yield from map_units(EpisodeWorker, job, indices, workers, config.cluster, ordered=True)


def _open_for_collection(config: CollectConfig) -> EpisodeStore:
    """The store to collect into: created, or for --resume opened (damage and all: `_repair` mends it)."""
    task = config.task_config()
    if config.resume:
        if not config.out.is_dir():
            problem = "is not a directory" if config.out.exists() else "does not exist"
            raise StoreError(f"--resume given but {config.out} {problem}; drop --resume to start a new dataset")
        store = EpisodeStore.open(config.out, mode="a", check_chunks=False)
        stored = store.attrs.get("collection", {})
        expected = config.identity()
        different = sorted(k for k in expected if stored.get(k) != _jsonable(expected[k]))
        if different:
            raise StoreError(
                f"cannot resume {config.out}: its {', '.join(different)} differ from this command's; resume "
                "with the original settings or collect into a new --out"
            )
        simulated_by = store.attrs.get("mujoco_version", mujoco.__version__)  # absent: a store of before 2026-11-30
        if simulated_by != mujoco.__version__:
            raise StoreError(
                f"cannot resume {config.out}: its episodes were simulated by MuJoCo {simulated_by}, this is "
                f"{mujoco.__version__}, whose episodes may differ; install mujoco=={simulated_by} to resume, or "
                "collect into a new --out"
            )
        return store
    env = make_environment(task)
    try:
        obs, _ = env.reset(seed=config.seed)
        state_size = env.sim_state().shape[0]
        cameras = {
            name: {
                "width": task.width,
                "height": task.height,
                "intrinsics": obs[f"{name}/intrinsics"].astype(float).tolist(),
                "pose": obs[f"{name}/pose"].astype(float).tolist(),
            }
            for name in task.camera_names
        }
    finally:
        env.close()
    frame_fields, episode_fields = field_specs(task, state_size)
    attributes = {
        "task": config.task,
        "task_config": _jsonable(task.to_dict()),
        "cameras": cameras,
        "collection": _jsonable(config.identity()),
        "target_episodes": config.episodes,
        "terminations": list(TERMINATIONS),
        "sim_state_spec": "mjSTATE_INTEGRATION",
        "mujoco_version": mujoco.__version__,
    }
    return EpisodeStore.create(config.out, attributes, frame_fields, episode_fields)


def _jsonable(value: Any) -> Any:
    """Tuples to lists (as JSON stores them), recursively."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def collect(config: CollectConfig) -> EpisodeStore:
    """Collect (or resume collecting) `config.episodes` episodes into `config.out`; returns the store.

    One collection at a time writes a store (a lock in it names the holder). On --resume, episodes that fail
    `EpisodeStore.verify` are collected again, in place, before new ones are appended.
    """
    lock = DirectoryLock(config.out, "keydyn collect")
    if config.resume and (config.out / "zarr.json").is_file():
        lock.acquire()  # before opening: opening to append drops rows that another writer may be adding
    store = None
    try:
        with _disk_full_named(config.out):
            store = _open_for_collection(config)
            if not config.resume:
                lock.acquire()
            if config.resume:
                _repair(store, config)
            _append(store, config)
    finally:
        if store is not None:
            store.close()  # every write finished before another writer may take the lock
        lock.release()
    return store


def _repair(store: EpisodeStore, config: CollectConfig) -> None:
    """Collect the damaged episodes of `store` again (deterministic: the same seeds give the same rows)."""
    progress = (lambda items: tqdm(items, desc="verify", unit="episode")) if config.progress else iter
    damage = store.verify(progress)
    if not damage:
        return
    print(f"{config.out}: re-collecting {len(damage.episodes)} damaged episodes:\n{damage.report()}")
    store.discard_chunks(damage.chunks)
    indices = sorted(damage.episodes)
    for index, (frames, meta) in zip(indices, _episodes(config, indices), strict=True):
        store.rewrite_episode(index, frames, meta)


def _append(store: EpisodeStore, config: CollectConfig) -> None:
    done = store.num_episodes
    if done >= config.episodes:
        return
    store.update_attrs({"target_episodes": max(config.episodes, store.attrs.get("target_episodes", 0))})
    with tqdm(
        total=config.episodes,
        initial=done,
        unit="episode",
        disable=not config.progress,
        desc=f"collect {config.task}",
    ) as bar:
        store.reserve(store.num_frames + (config.episodes - done) * (config.steps + 1), config.episodes)
        for frames, meta in _episodes(config, range(done, config.episodes)):
            store.append_episode(frames, meta)
            bar.update(1)
    store.trim()  # the rows reserved for episodes cut short


@contextlib.contextmanager
def _disk_full_named(out: Path) -> Iterator[None]:
    """Turn a full disk (or quota) while writing the store `out` into a StoreError naming it and the fix."""
    try:
        yield
    except OSError as error:
        if not is_disk_full(error):
            raise
        raise StoreError(f"{disk_full_error(out, error)} (the episodes committed so far are kept)") from error

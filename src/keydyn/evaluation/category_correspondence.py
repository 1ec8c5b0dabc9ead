"""`keydyn category-correspondence`: does a descriptor network trained on mugs give the same part of different
mugs the same descriptor, and where does the keypoint it locates land on another mug?

For each of `scenes` reference scenes (a training mug in a random pose and colour, rendered by the task's
simulator), the named parts of that mug the camera sees (`keydyn.sim.meshes.mug_parts`: the outer wall near the
base, at mid-height and below the rim at 7 azimuths from the handle, and the handle) are references: the network's
descriptors at their pixels. Each is located with the keypoints' correspondence function (eq. 7-11, with the
default recipe's depth and precision, as the controller runs it) in two more scenes, each in a random pose and
colour of its own:
    same_mug   the reference's own mug: the network within one instance, the control;
    other_mug  another mug of the task's split (`mugs`: another training mug; `mugs_unseen`: a held-out one).
The error of a sighting is the distance from the located 3D point to the same part of the mug in that scene
(counted where the part is seen in both images), and `nearest_part_rate` the share of sightings whose located point
is nearer to the same part than to any other named part of that mug. Ground-truth shapes and poses serve the
measurement only.

    keydyn category-correspondence --visual-run repro/visual/seed0 --out parts.json
    keydyn category-correspondence --visual-run repro/visual/seed0 --task mugs_unseen --out parts_unseen.json

With --out, parts.png beside parts.json shows the first `pictures` scenes: the reference's parts, and on the same
and on the other mug the true part (ring) and where it was located (cross), one colour per part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from keydyn.files import read_json, write_json_atomic
from keydyn.latents.descriptor.accuracy import VISIBILITY_TOLERANCE_M
from keydyn.latents.descriptor.method import load_visual
from keydyn.machine import machine
from keydyn.plots import pyplot, save_figure
from keydyn.sim import PushingEnv, TaskConfig, task_config
from keydyn.sim.env import mug_instances, mug_shape
from keydyn.sim.meshes import MUG_PART_HEIGHTS, mug_parts
from keydyn.vision.geometry import bilinear_sample, pose_matrix, seen_points, transform_points
from keydyn.vision.keypoints import DEPTH_MODES, DepthMode, locate_keypoints
from keydyn.vision.network import DescriptorNet, rgb_to_tensor
from keydyn.vision.views import RGBDView

COMPARISONS = ("same_mug", "other_mug")


@dataclass(frozen=True)
class CategoryCorrespondenceConfig:
    """Which network, on which mugs, over how many scenes."""

    visual_run: Path
    """A descriptor network trained on a mug task (`keydyn train-visual` on a `mugs` dataset)."""
    task: str = "mugs"
    """Where the other mug comes from: `mugs`, another training mug (the paper's protocol: new colours only), or
    `mugs_unseen`, a held-out shape. The reference mugs are always training mugs."""
    scenes: int = 40
    """Reference scenes, each compared with one scene of the same mug and one of another mug."""
    camera: str | None = None
    """Camera to render (default: the task's first)."""
    checkpoint: Literal["best", "last"] = "best"
    precision: Literal["fp32", "bf16"] = "bf16"
    """Arithmetic of the network, as `--keypoints.precision` of train-dynamics (the default recipe's: bf16)."""
    depth: DepthMode = "pixel"
    """A located point's depth, as `--keypoints.depth` of train-dynamics (default: the depth image at its pixel)."""
    seed: int = 0
    """Seed of the scenes: mugs, poses and colours."""
    visibility_tolerance: float = VISIBILITY_TOLERANCE_M
    """Metres between the rendered depth and a part's depth for the part to count as seen."""
    pictures: int = 4
    """Scenes drawn in the picture beside --out."""
    out: Path | None = None
    """Also write the figures and every sighting to this JSON file, and the picture beside it (.png)."""

    def __post_init__(self) -> None:
        if self.scenes < 1:
            raise ValueError(f"--scenes must be at least 1, got {self.scenes}")
        if self.pictures < 0:
            raise ValueError(f"--pictures must be >= 0, got {self.pictures}")
        if self.precision not in ("fp32", "bf16") or self.depth not in DEPTH_MODES:
            raise ValueError(
                f"--precision {self.precision!r} / --depth {self.depth!r}: use fp32 or bf16 / {', '.join(DEPTH_MODES)}"
            )


@dataclass(frozen=True)
class PartScene:
    """One rendered scene and the true image positions of its mug's named parts.

    Attributes:
        instance: the mug instance.
        view: the camera's RGB-D view.
        parts_world: (P, 3) float64 the parts' true world points, metres, in `part_names` order.
        uv: (P, 2) float64 their pixels.
        visible: (P,) bool, whether the camera sees each part: inside the image, its nearest pixel on the mug's
            mask, and the rendered depth at it (bilinear) within tolerance of its own.
    """

    instance: int
    view: RGBDView
    parts_world: torch.Tensor
    uv: torch.Tensor
    visible: torch.Tensor


def part_names() -> tuple[str, ...]:
    """The named parts of every mug, in the order of `PartScene` rows."""
    return tuple(mug_parts(mug_shape(0)))


def render_part_scene(env: PushingEnv, camera: str, instance: int, seed: int, tolerance: float) -> PartScene:
    """Reset `env` with mug `instance` in the pose and colour that `seed` draws and locate its parts in `camera`."""
    observation, _ = env.reset(seed=seed, options={"mug_instance": instance})
    view = RGBDView(
        rgb=torch.as_tensor(observation[f"{camera}/rgb"]),
        depth=torch.as_tensor(observation[f"{camera}/depth"]),
        mask=torch.as_tensor(observation[f"{camera}/mask"]).bool(),
        intrinsics=torch.as_tensor(observation[f"{camera}/intrinsics"], dtype=torch.float64),
        T_world_camera=torch.as_tensor(observation[f"{camera}/pose"], dtype=torch.float64),
    )
    position, quaternion = (torch.as_tensor(value, dtype=torch.float64) for value in env.object_pose())
    body = torch.as_tensor(np.stack(list(mug_parts(mug_shape(instance)).values())), dtype=torch.float64)
    world = transform_points(pose_matrix(position, quaternion), body)
    uv, seen = seen_points(world[None], view.depth[None], view.intrinsics, view.T_world_camera, tolerance)
    uv, seen = uv[0], seen[0]
    pixel = uv.round().long()
    on_mug = view.mask[pixel[:, 1].clamp(0, view.height - 1), pixel[:, 0].clamp(0, view.width - 1)]
    return PartScene(instance, view, world, uv, seen & on_mug)


@torch.no_grad()
def locate_parts(
    net: DescriptorNet,
    eta: float,
    reference: PartScene,
    targets: list[PartScene],
    bf16: bool = False,
    depth_mode: DepthMode = "pixel",
) -> list[dict[str, np.ndarray]]:
    """Locate the reference's visible parts in each target scene, as `locate_keypoints` locates keypoints.

    Returns:
        Per target: "parts" (K,) int indices of the reference's visible parts, "error_m" (K,) distance from the
        located point to the same part in the target (NaN where the located point has no depth), "nearest" (K,)
        int index of the target's part nearest the located point (-1 where it has no depth), "seen" (K,) bool
        whether the target shows the part, "uv" (K, 2) located pixels.
    """
    images = torch.stack([rgb_to_tensor(scene.view.rgb) for scene in (reference, *targets)])
    descriptors = net.infer(images, bf16=bf16)  # (1 + T, D, H, W)
    parts = torch.nonzero(reference.visible).flatten()
    references = bilinear_sample(descriptors[:1], reference.uv[parts][None])[0]  # (K, D)
    results = []
    for descriptor, target in zip(descriptors[1:], targets, strict=True):
        view = target.view
        located = locate_keypoints(
            descriptor, references, view.depth, view.intrinsics, view.T_world_camera, eta, depth_mode=depth_mode
        )
        points = located.points_world.double()  # (K, 3)
        distances = torch.cdist(points, target.parts_world)  # (K, P), NaN rows where a point has no depth
        nearest = distances.nan_to_num(np.inf).argmin(dim=1)
        results.append(
            {
                "parts": parts.numpy(),
                "error_m": distances[torch.arange(len(parts)), parts].numpy(),
                "nearest": torch.where(torch.isfinite(points).all(dim=1), nearest, -1).numpy(),
                "seen": target.visible[parts].numpy(),
                "uv": located.uv.double().numpy(),
            }
        )
    return results


def _visual_task(visual_run: Path) -> TaskConfig:
    """The task a visual run trained on, which must be the training mugs."""
    task = TaskConfig.from_dict(read_json(Path(visual_run) / "task.json"))
    if task.object != "mug" or task.mug_split != "train":
        raise ValueError(
            f"{visual_run} was trained on task {task.name!r} ({task.object}, {task.mug_split} split); category-level "
            "correspondence needs a network trained on the training mugs: `keydyn train-visual` on a dataset of "
            "`keydyn collect --task mugs`"
        )
    return task


def category_correspondence(config: CategoryCorrespondenceConfig) -> dict[str, Any]:
    """The figures per comparison (same mug, other mug): sightings, errors in cm, nearest-part rate, per ring.

    Raises:
        ValueError: the network was not trained on mugs, --task is not a mug task, or --camera is unknown.
    """
    reference_task = _visual_task(config.visual_run)
    target_task = task_config(config.task, width=reference_task.width, height=reference_task.height)
    if target_task.object != "mug":
        raise ValueError(f"--task {config.task} has no mugs; use mugs or mugs_unseen")
    camera = config.camera or reference_task.camera_names[0]
    cameras = [name for name in reference_task.camera_names if name in target_task.camera_names]
    if camera not in cameras:
        raise ValueError(f"--camera {camera}: the cameras of both tasks are {', '.join(cameras) or 'none'}")
    net, eta = load_visual(config.visual_run, config.checkpoint)
    names = part_names()
    reference_env, target_env = PushingEnv(reference_task), PushingEnv(target_task)
    rng = np.random.default_rng(config.seed)
    references, others = mug_instances(reference_task), mug_instances(target_task)
    rows, pictures = [], []
    try:
        for scene in range(config.scenes):
            first = int(rng.choice(references))
            other = int(rng.choice([instance for instance in others if instance != first]))
            seeds = np.random.SeedSequence([config.seed, scene]).generate_state(3)
            reference = render_part_scene(reference_env, camera, first, int(seeds[0]), config.visibility_tolerance)
            targets = [
                render_part_scene(reference_env, camera, first, int(seeds[1]), config.visibility_tolerance),
                render_part_scene(target_env, camera, other, int(seeds[2]), config.visibility_tolerance),
            ]
            located = locate_parts(net, eta, reference, targets, config.precision == "bf16", config.depth)
            for comparison, target, result in zip(COMPARISONS, targets, located, strict=True):
                for k, part in enumerate(result["parts"]):
                    if result["seen"][k]:
                        rows.append(
                            {
                                "scene": scene,
                                "comparison": comparison,
                                "part": names[part],
                                "reference_instance": first,
                                "target_instance": target.instance,
                                "error_cm": _finite_or_none(100.0 * result["error_m"][k]),
                                "nearest_part": names[result["nearest"][k]] if result["nearest"][k] >= 0 else None,
                            }
                        )
            if len(pictures) < config.pictures:
                pictures.append((reference, targets, located))
    finally:
        reference_env.close()
        target_env.close()
    figures = {
        "measurement": "category_correspondence",
        "visual_run": str(config.visual_run),
        "checkpoint": config.checkpoint,
        "precision": config.precision,
        "depth": config.depth,
        "task": config.task,
        "camera": camera,
        "image_size": [reference_task.width, reference_task.height],
        "scenes": config.scenes,
        "seed": config.seed,
        **{name: summarize_sightings([row for row in rows if row["comparison"] == name]) for name in COMPARISONS},
        "machine": machine(),
    }
    if config.out is not None:
        Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(config.out, {**figures, "sightings": rows})
        if pictures:
            title = f"{config.visual_run} on {config.task}"
            plot_part_scenes(pictures, names, Path(config.out).with_suffix(".png"), title)
    return figures


def _finite_or_none(value: float) -> float | None:
    """`value` as a float, or None (JSON null) when it is NaN: a located point without depth."""
    return float(value) if np.isfinite(value) else None


def summarize_sightings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures of one comparison's sightings: how many, how many were located without depth, the errors of the
    others (cm: median, mean, 90th percentile, median per ring), the share within 1 and 2 cm and the nearest-part
    rate (of every sighting: one without depth counts as a miss)."""
    if not rows:
        return {"sightings": 0}
    errors = np.array([np.nan if row["error_cm"] is None else row["error_cm"] for row in rows])
    located = np.isfinite(errors)
    rings = {ring: [row["part"].startswith(ring) for row in rows] for ring in (*MUG_PART_HEIGHTS, "handle")}
    summary: dict[str, Any] = {"sightings": len(rows), "without_depth": int((~located).sum())}
    if located.any():
        summary |= {
            "error_cm_median": float(np.median(errors[located])),
            "error_cm_mean": float(np.mean(errors[located])),
            "error_cm_p90": float(np.percentile(errors[located], 90)),
            "error_cm_median_by_ring": {
                ring: {"sightings": int((mask & located).sum()), "median": float(np.median(errors[mask & located]))}
                for ring, mask in ((ring, np.array(mask)) for ring, mask in rings.items())
                if (mask & located).any()
            },
        }
    misses = np.where(located, errors, np.inf)
    summary |= {
        "within_1cm": float(np.mean(misses <= 1.0)),
        "within_2cm": float(np.mean(misses <= 2.0)),
        "nearest_part_rate": float(np.mean([row["nearest_part"] == row["part"] for row in rows])),
    }
    return summary


def _crop(scene: PartScene, margin: float = 1.6) -> tuple[float, float, float]:
    """(u centre, v centre, half side) of a square crop around the scene's object mask, pixels."""
    v, u = torch.nonzero(scene.view.mask, as_tuple=True)
    if len(u) == 0:
        return scene.view.width / 2, scene.view.height / 2, min(scene.view.width, scene.view.height) / 2
    half = margin * max(int(u.max() - u.min()), int(v.max() - v.min()), 12) / 2
    return float(u.float().mean()), float(v.float().mean()), half


def plot_part_scenes(
    pictures: list[tuple[PartScene, list[PartScene], list[dict[str, np.ndarray]]]],
    names: tuple[str, ...],
    path: Path,
    title: str,
    shown: int = 8,
) -> Path:
    """A row per scene: the reference mug with up to `shown` of its visible parts (dots), then the same mug and
    another mug, each with the true part (ring) and where it was located (cross) in the part's colour."""
    plt = pyplot()
    figure, axes = plt.subplots(max(len(pictures), 1), 3, figsize=(9, 3 * max(len(pictures), 1)), squeeze=False)
    colours = plt.get_cmap("tab10")
    for row, (reference, targets, located) in enumerate(pictures):
        parts = located[0]["parts"]
        chosen = np.linspace(0, len(parts) - 1, min(shown, len(parts))).round().astype(int) if len(parts) else []
        panels = [(reference, None, f"mug {reference.instance}: parts")]
        panels += [
            (target, result, f"{label} (mug {target.instance})")
            for target, result, label in zip(targets, located, ("same mug", "other mug"), strict=True)
        ]
        for axis, (scene, result, label) in zip(axes[row], panels, strict=True):
            u, v, half = _crop(scene)
            axis.imshow(scene.view.rgb.numpy())
            for colour, k in enumerate(chosen):
                part = int(parts[k])
                if result is None:
                    axis.plot(*scene.uv[part].numpy(), "o", color=colours(colour), markersize=6, label=names[part])
                    continue
                if result["seen"][k]:
                    axis.plot(*scene.uv[part].numpy(), "o", mfc="none", color=colours(colour), markersize=8)
                axis.plot(*result["uv"][k], "x", color=colours(colour), markersize=7, mew=2)
            axis.set_xlim(u - half, u + half)
            axis.set_ylim(v + half, v - half)
            axis.set_title(label, fontsize=9)
            axis.axis("off")
        if len(chosen):
            axes[row][0].legend(fontsize=6, loc="lower left", framealpha=0.6)
    legend = "ring: the part on that mug; cross: where the reference's descriptor located it"
    figure.suptitle(f"{title}\n{legend}", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)

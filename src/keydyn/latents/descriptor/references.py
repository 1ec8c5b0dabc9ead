"""Reference descriptors of the descriptor keypoint latents: DS (K random) and SDS (K* reliable, spread out).

Paper section 3.2 and appendix 8: K reference descriptors are sampled uniformly from the object mask of one
reference image. DS keeps all K (K = 50). SDS ranks them by their mean confidence (eq. 15) over frames drawn
from the whole dataset (its dynamics validation episodes too) and keeps, greedily, the K* most confident whose
reference pixels are at least `min_distance_px` apart (K* = 5; 25 px at 640x480, scaled with the image width).
The weighted variants (WDS, WSDS) use the references of DS and SDS respectively.

Beyond the paper, SDS first drops the candidates that the correspondence function does not find at their own
pixel in the reference image (more than `reference_tolerance_px` away): an ambiguous descriptor (one that
also matches a similar-looking part of the object) has a spread or two-peaked heatmap, and its keypoint marks
some point between the parts rather than the one it was sampled at. A high mean confidence over the ranking
frames does not reveal this.

Also beyond the paper, and off by default: `sds_ranking="rigid"` ranks the candidates by how well they keep to
the rigid motion of all the candidates over those frames (`rigid_consistency`) instead of by mean
confidence. From an angled camera a point on a face that turns away is lost in some poses and located
elsewhere with a confidence hardly lower; a goal image in such a pose gives a wrong goal keypoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from keydyn.data.store import EpisodeStore
from keydyn.files import read_json, write_json_atomic
from keydyn.latents.descriptor.fusion import fuse_keypoints
from keydyn.latents.descriptor.rigid import rigid_consistency
from keydyn.runs import read_recorded_tensors, write_tensors
from keydyn.sim.config import check_seed
from keydyn.vision.keypoints import (
    DEPTH_MODES,
    DepthMode,
    Keypoints,
    confidence_ranking,
    locate_keypoints,
    sample_reference_descriptors,
    select_spatial_descriptors,
)
from keydyn.vision.network import DescriptorNet, rgb_to_tensor
from keydyn.vision.views import RGBDView, load_view

PAPER_MIN_DISTANCE_PX = 25.0  # SDS separation at the paper's 640 px wide images
PAPER_WIDTH = 640
REFERENCE_TOLERANCE_PX = 6.0  # SDS self-match tolerance at 640 px wide images (3 px at 320x240)
RIGID_RANKING_THRESHOLD_M = 0.015  # MSAC inlier distance of the candidates' rigid fit (sds_ranking="rigid")
SDS_RANKINGS = ("confidence", "rigid")


@dataclass(frozen=True)
class KeypointConfig:
    """How descriptor keypoints are chosen and located (the latent kind itself is `--latent`)."""

    num_descriptors: int = 50
    """K: reference descriptors sampled from the reference image's object mask (all of them for DS/WDS)."""
    num_selected: int = 5
    """K*: descriptors kept by SDS/WSDS."""
    min_distance_px: float | None = None
    """SDS separation of the kept descriptors' reference pixels; default 25 px scaled by width / 640."""
    reference_tolerance_px: float | None = None
    """SDS keeps only candidates located within this many pixels of their own pixel in the reference image
    (beyond the paper); default 6 px scaled by width / 640 (`inf` keeps all, as the paper)."""
    camera: str | None = None
    """Camera whose images locate the keypoints; default the task's first camera."""
    fuse_cameras: bool = False
    """Locate the keypoints in every camera's image and average the world points, weighted by confidence
    (beyond the paper, which locates them from one camera; at control time each step runs the network once
    per camera). SDS still ranks and spaces the candidates in --keypoints.camera's images."""
    rigid_outlier_mm: float = 0.0
    """Replace keypoints more than this many millimetres off the rigid shape of the others
    (`keydyn.latents.descriptor.rigid`; beyond the paper), in the training latents and at control time alike;
    0 keeps every located keypoint."""
    rigid_project: bool = False
    """With --keypoints.rigid-outlier-mm: replace every keypoint by the rigid fit of the inliers (the template
    moved by the estimated motion), not only the outliers (beyond the paper)."""
    reference_episode: int = 0
    reference_frame: int = 0
    """The reference image: this frame (0-based, within the episode) of --keypoints.reference-episode."""
    reference_largest_of: int = 0
    """When N > 0, the reference image is, of frame --keypoints.reference-frame of episodes 0 .. N-1, the one
    showing the most object pixels in --keypoints.camera (beyond the paper, whose reference was hand-picked). On
    `occlusions` episode 0 shows the box on its side edge-on (632 pixels) and SDS puts every keypoint on one narrow
    face; the largest of 50 (1,556 pixels) spreads them over two faces. 0: --keypoints.reference-episode."""
    sds_ranking: Literal["confidence", "rigid"] = "confidence"
    """How SDS ranks the candidates: by mean confidence (paper), or `rigid`, by the 90th percentile of their
    distance to the rigid fit of all candidates over the frames, smallest first (beyond the paper: prefers
    points the camera keeps seeing and locating consistently; see the module docstring)."""
    confidence_frames: int = 100
    """SDS: frames (drawn at random from the dataset) over which the candidates are ranked."""
    checkpoint: Literal["best", "last"] = "best"
    """Checkpoint of the visual run: best or last."""
    batch_size: int = 16
    """Images per network call when locating keypoints in a dataset."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Arithmetic of the descriptor network while locating keypoints; bf16 autocast is faster on CPUs with AMX /
    AVX-512 BF16 (`--precision` of train-visual and `--mpc.precision` name the same choice)."""
    depth: DepthMode = "pixel"
    """A keypoint's depth: the depth image at its pixel (beyond the paper; keeps points whose heatmaps straddle an
    edge on the surface) or `expectation`, the heatmap-weighted depth of the paper (eq. 11)."""
    seed: int = 0
    cache_dir: Path | None = None
    """Where the keypoints located in every dataset frame are cached, keyed by network, references, precision
    and dataset, so that runs with the same references share them (DS and WDS of one network, a rerun); default:
    keypoint_cache/ inside the dynamics run."""

    @property
    def bf16(self) -> bool:
        """Whether the network runs under bfloat16 autocast."""
        return self.precision == "bf16"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"--keypoints.precision {self.precision!r}: use 'fp32' or 'bf16'")
        check_seed(self.seed, "--keypoints.seed")
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        for name in ("num_descriptors", "num_selected", "confidence_frames", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--keypoints.{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.num_selected > self.num_descriptors:
            raise ValueError(
                f"--keypoints.num-selected ({self.num_selected}) exceeds --keypoints.num-descriptors "
                f"({self.num_descriptors}); SDS selects from the sampled descriptors"
            )
        if self.checkpoint not in ("best", "last"):
            raise ValueError(f"--keypoints.checkpoint {self.checkpoint!r}: use 'best' or 'last'")
        if self.reference_tolerance_px is not None and not self.reference_tolerance_px > 0:
            raise ValueError(
                f"--keypoints.reference-tolerance-px must be positive (inf keeps every candidate), got "
                f"{self.reference_tolerance_px}"
            )
        if self.reference_largest_of < 0 or (self.reference_largest_of > 0 and self.reference_episode != 0):
            raise ValueError(
                f"--keypoints.reference-largest-of {self.reference_largest_of} must be >= 0, and it picks the "
                f"reference episode itself: drop --keypoints.reference-episode ({self.reference_episode}) or give 0"
            )
        if self.rigid_outlier_mm < 0:
            raise ValueError(f"--keypoints.rigid-outlier-mm must be >= 0 (0: off), got {self.rigid_outlier_mm}")
        if self.rigid_project and self.rigid_outlier_mm == 0:
            raise ValueError(
                "--keypoints.rigid-project fits the rigid shape with --keypoints.rigid-outlier-mm as its inlier "
                "threshold; set that too (e.g. 15)"
            )
        if self.sds_ranking not in SDS_RANKINGS:
            raise ValueError(f"--keypoints.sds-ranking {self.sds_ranking!r}: use one of {', '.join(SDS_RANKINGS)}")
        if self.depth not in DEPTH_MODES:
            raise ValueError(f"--keypoints.depth {self.depth!r}: use one of {', '.join(DEPTH_MODES)}")

    def separation(self, width: int) -> float:
        """The SDS separation in pixels at images `width` pixels wide."""
        if self.min_distance_px is not None:
            return self.min_distance_px
        return PAPER_MIN_DISTANCE_PX * width / PAPER_WIDTH

    def reference_tolerance(self, width: int) -> float:
        """The SDS self-match tolerance in pixels at images `width` pixels wide."""
        if self.reference_tolerance_px is not None:
            return self.reference_tolerance_px
        return REFERENCE_TOLERANCE_PX * width / PAPER_WIDTH


@dataclass(frozen=True)
class References:
    """The reference descriptors of a keypoint latent.

    Attributes:
        descriptors: (K, D) float32 reference descriptors.
        uv: (K, 2) float32 their pixels (u, v) in the reference image.
        confidence: (K,) float32 mean confidence over the SDS frames (eq. 15), or NaN when not measured (DS).
        camera: the camera that locates them (and that took the reference image).
        frame: global dataset row of the reference image.
        eta: descriptor kernel width the network was trained with (eq. 7).
        depth_mode: how a located keypoint gets its depth ("expectation", eq. 11, or "pixel").
        fused_cameras: further cameras that locate them too, their points fused with `camera`'s
            (`keydyn.latents.descriptor.fusion`); empty for one camera, as in the paper.
    """

    descriptors: torch.Tensor
    uv: torch.Tensor
    confidence: torch.Tensor
    camera: str
    frame: int
    eta: float
    depth_mode: DepthMode = "expectation"
    fused_cameras: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.descriptors.shape[0])

    @property
    def cameras(self) -> tuple[str, ...]:
        """Every camera that locates the references, `camera` first."""
        return (self.camera, *self.fused_cameras)

    def save(self, directory: Path) -> None:
        """Write `references.safetensors` (tensors) and `references.json` (the rest) into `directory`."""
        tensors = {"descriptors": self.descriptors, "uv": self.uv, "confidence": self.confidence}
        tensors = {name: value.detach().float().contiguous() for name, value in tensors.items()}
        write_tensors(directory / "references.safetensors", tensors)
        info = {
            "camera": self.camera,
            "frame": self.frame,
            "eta": self.eta,
            "depth_mode": self.depth_mode,
            "fused_cameras": list(self.fused_cameras),
        }
        write_json_atomic(directory / "references.json", info)

    @staticmethod
    def load(directory: Path) -> References:
        """The references saved in `directory` by `save`."""
        path = Path(directory) / "references.json"
        if not path.exists():
            raise FileNotFoundError(f"{directory} has no references.json; train it with a descriptor --latent")
        info = read_json(path, ("camera", "frame", "eta", "depth_mode"))
        info["fused_cameras"] = tuple(info.get("fused_cameras", ()))  # runs before fusion have one camera
        tensors = read_recorded_tensors(Path(directory) / "references.safetensors")
        return References(tensors["descriptors"], tensors["uv"], tensors["confidence"], **info)

    def subset(self, indices: torch.Tensor) -> References:
        """The references `indices` (K*,), in that order."""
        return dataclasses.replace(
            self, descriptors=self.descriptors[indices], uv=self.uv[indices], confidence=self.confidence[indices]
        )


def reference_frame(store: EpisodeStore, config: KeypointConfig) -> int:
    """The global dataset row of the configured reference image: frame --keypoints.reference-frame of
    --keypoints.reference-episode, or of the episode among the first --keypoints.reference-largest-of whose frame
    shows the most object pixels (the first such episode on a tie)."""
    if config.reference_largest_of > 0:
        camera = store.camera(config.camera, "--keypoints.camera")
        rows = [
            start + config.reference_frame
            for start, stop in map(store.episode_range, range(min(config.reference_largest_of, store.num_episodes)))
            if config.reference_frame < stop - start
        ]
        if not rows:
            raise ValueError(f"--keypoints.reference-frame {config.reference_frame}: no episode has that many frames")
        pixels = [int(store.frames(f"{camera}/mask", row, row + 1)[0].sum()) for row in rows]
        return rows[int(np.argmax(pixels))]
    if not 0 <= config.reference_episode < store.num_episodes:
        raise ValueError(
            f"--keypoints.reference-episode {config.reference_episode}: the dataset has {store.num_episodes} episodes"
        )
    start, stop = store.episode_range(config.reference_episode)
    if not 0 <= config.reference_frame < stop - start:
        raise ValueError(
            f"--keypoints.reference-frame {config.reference_frame}: episode {config.reference_episode} has "
            f"{stop - start} frames"
        )
    return start + config.reference_frame


CameraImages = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""One camera's B frames: rgb (B, H, W, 3) uint8, depth (B, H, W) metres, intrinsics (3, 3) or (B, 3, 3) pixels,
T_world_camera (4, 4) or (B, 4, 4) metres."""


@torch.no_grad()
def locate_references(
    net: DescriptorNet, references: References, images: Mapping[str, CameraImages], bf16: bool
) -> Keypoints:
    """The (B, K) keypoints of the references in B frames: located in `references.camera`'s images, and fused
    with those located in the images of its `fused_cameras` when it has any.

    Args:
        net: the descriptor network, in eval mode, on any device (the images go to it, the descriptors come
            back: the keypoints are located on the CPU).
        references: the reference descriptors and the cameras that locate them.
        images: camera name -> that camera's CPU images of the B frames (`CameraImages`), for every camera in
            `references.cameras`.
        bf16: bfloat16 autocast for the network.
    """
    device = next(net.parameters()).device
    located = []
    for camera in references.cameras:
        if camera not in images:
            cameras = ", ".join(references.cameras)
            raise KeyError(f"no {camera} images: the references are located with cameras {cameras}")
        rgb, depth, intrinsics, pose = images[camera]
        descriptors = net.infer(rgb_to_tensor(rgb.to(device)), bf16=bf16).cpu()
        eta, depth_mode = references.eta, references.depth_mode
        located.append(
            locate_keypoints(descriptors, references.descriptors, depth, intrinsics, pose, eta, depth_mode=depth_mode)
        )
    if len(located) == 1:
        return located[0]
    _, _, intrinsics, pose = images[references.camera]
    return fuse_keypoints(located, intrinsics, pose)


@torch.no_grad()
def locate_in_frames(
    net: DescriptorNet, store: EpisodeStore, references: References, frames: Sequence[int], batch_size: int, bf16: bool
) -> Iterator[tuple[list[RGBDView], Keypoints]]:
    """Locate the references in dataset rows `frames` from their cameras, `batch_size` frames at a time.

    Yields each batch's views from `references.camera` (images, depth, camera and true object pose) and its
    located keypoints (B, K) (see `locate_references`).
    """
    for begin in range(0, len(frames), batch_size):
        batch = frames[begin : begin + batch_size]
        views = {camera: [load_view(store, camera, int(frame)) for frame in batch] for camera in references.cameras}
        images = {
            camera: (
                torch.stack([view.rgb for view in camera_views]),
                torch.stack([view.depth for view in camera_views]),
                camera_views[0].intrinsics,
                camera_views[0].T_world_camera,
            )
            for camera, camera_views in views.items()
        }
        yield views[references.camera], locate_references(net, references, images, bf16)


def candidate_sightings(
    net: DescriptorNet, store: EpisodeStore, references: References, frames: torch.Tensor, config: KeypointConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidences (F, K) (eq. 15) and world points (F, K, 3) (metres) of K references in dataset rows `frames`
    (F,), located from their camera."""
    confidences, points = [], []
    for _, located in locate_in_frames(net, store, references, frames.tolist(), config.batch_size, config.bf16):
        confidences.append(located.confidence)
        points.append(located.points_world)
    return torch.cat(confidences), torch.cat(points)


@torch.no_grad()
def choose_references(
    net: DescriptorNet, store: EpisodeStore, config: KeypointConfig, spatial: bool, eta: float
) -> References:
    """Sample K reference descriptors from the reference image's object mask; with `spatial`, keep the SDS.

    Args:
        net: the descriptor network, in eval mode.
        store: the dataset (reference image and, for SDS, the frames the confidences are averaged over).
        config: numbers of descriptors, separation, self-match tolerance, camera, reference image, seed.
        spatial: SDS / WSDS (K* selected descriptors among the self-matching candidates) rather than DS / WDS
            (all K).
        eta: the descriptor kernel width the network was trained with.

    Returns:
        K (DS) or K* (SDS, best first) references.

    Raises:
        ValueError: the reference image shows too little of the object, or too few descriptors match
            themselves or are far apart.
    """
    camera = store.camera(config.camera, "--keypoints.camera")
    frame = reference_frame(store, config)
    view = load_view(store, camera, frame)
    if int(view.mask.sum()) < config.num_descriptors:
        raise ValueError(
            f"the reference image (dataset row {frame}: frame {config.reference_frame} of its episode, camera "
            f"{camera}) shows {int(view.mask.sum())} object pixels, fewer than --keypoints.num-descriptors "
            f"{config.num_descriptors}; pick another --keypoints.reference-episode/-frame (or "
            "--keypoints.reference-largest-of)"
        )
    generator = torch.Generator().manual_seed(config.seed)
    descriptors = net.infer(rgb_to_tensor(view.rgb)[None], bf16=config.bf16)[0]
    sampled, uv = sample_reference_descriptors(descriptors, view.mask, config.num_descriptors, generator)
    others = tuple(name for name in store.attrs["cameras"] if name != camera) if config.fuse_cameras else ()
    references = References(sampled, uv, torch.full((len(uv),), float("nan")), camera, frame, eta, config.depth)
    if not spatial:
        return dataclasses.replace(references, fused_cameras=others)
    located = locate_keypoints(
        descriptors, references.descriptors, view.depth, view.intrinsics, view.T_world_camera, eta
    )
    tolerance = config.reference_tolerance(view.width)
    self_matching = torch.nonzero((located.uv - references.uv).norm(dim=-1) <= tolerance).flatten()
    if len(self_matching) < config.num_selected:
        raise ValueError(
            f"only {len(self_matching)} of {len(references)} reference descriptors are found within {tolerance:.2f} "
            f"px of their own pixel in the reference image, fewer than --keypoints.num-selected "
            f"{config.num_selected}: the network is undertrained, or raise --keypoints.reference-tolerance-px"
        )
    candidates = references.subset(self_matching)  # checked before the costly confidences, which need only these
    count = min(config.confidence_frames, store.num_frames)
    frames = torch.randperm(store.num_frames, generator=generator)[:count]
    confidences, points = candidate_sightings(net, store, candidates, frames, config)
    candidates = dataclasses.replace(candidates, confidence=confidences.mean(dim=0))
    if config.sds_ranking == "rigid":
        ranking = -rigid_consistency(points, RIGID_RANKING_THRESHOLD_M)
    else:
        ranking = confidence_ranking(confidences)
    try:
        chosen = select_spatial_descriptors(ranking, candidates.uv, config.separation(view.width), config.num_selected)
    except ValueError as error:
        raise ValueError(
            f"SDS: fewer than {config.num_selected} of the {len(candidates)} sampled descriptors that match themselves "
            f"(of {len(references)}) are {config.separation(view.width):g} px apart in the reference image; lower "
            f"--keypoints.min-distance-px (now {config.separation(view.width):g}) or sample more with "
            f"--keypoints.num-descriptors (now {config.num_descriptors}; DS and WDS use them all)"
        ) from error
    return dataclasses.replace(candidates.subset(chosen), fused_cameras=others)

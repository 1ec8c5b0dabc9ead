"""`keydyn keypoint-accuracy`: descriptor keypoints on held-out episodes, their located 3D points against the
true positions of the same object points, and the confidence of visible vs occluded points.

The keypoints are the references of a dynamics run with a descriptor latent (`--run`), or SDS references
chosen here from the visual run (`--visual-run`, with `--keypoints.*`). The held-out episodes are those the
visual run did not train on (its seeded split). Targets (issue 4): median 3D error of SDS keypoints <= 5 mm
on top_down; on occlusions, the confidence of occluded points clearly below that of visible ones.

    keydyn keypoint-accuracy --dataset data/top_down --run runs/sds_top_down
    keydyn keypoint-accuracy --dataset data/occlusions --visual-run visual/occlusions [--latent ds] [--out a.json]

With --out, a.png beside a.json shows the confidence of visible and occluded sightings (the paper's claim that
confidence flags occlusion). Per frame it also reports how far the keypoints' rigid fit is turned from the
truth (`rotation_error_deg_median`) and the share of frames turned more than 90 deg (`flipped_frames`): the
keypoints found as a whole on the object turned about, which an error per keypoint spreads out of sight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from keydyn.data.split import split_episodes
from keydyn.data.store import EpisodeStore
from keydyn.files import read_json, write_json_atomic
from keydyn.latents.descriptor.accuracy import VISIBILITY_TOLERANCE_M, confidence_auc, keypoint_errors
from keydyn.latents.descriptor.method import load_run_visual, load_visual, run_locates_in_bf16
from keydyn.latents.descriptor.references import KeypointConfig, References, choose_references
from keydyn.latents.descriptor.rigid import RigidFilter
from keydyn.machine import machine
from keydyn.plots import pyplot, save_figure
from keydyn.runs import open_dataset, trained_on_other_data


@dataclass(frozen=True)
class KeypointAccuracyConfig:
    """Which keypoints to measure on which dataset's held-out episodes."""

    dataset: Path
    """Dataset the visual run trained on (its held-out episodes are measured)."""
    run: Path | None = None
    """A dynamics run with a descriptor latent: measure its references, rigid filter and precision (and its visual
    run); nothing else may be given with it."""
    visual_run: Path | None = None
    """A visual run: choose references from it with --latent and --keypoints.* (no rigid filter: use --run)."""
    latent: Literal["sds", "ds"] = "sds"
    """With --visual-run: the SDS references (K* chosen), or DS's K random ones on the object mask."""
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    """How references are chosen and located with --visual-run (with --run, the run's own settings)."""
    max_frames: int = 2000
    """At most this many held-out frames (evenly spaced)."""
    visibility_tolerance: float = VISIBILITY_TOLERANCE_M
    """Metres between the rendered depth and a point's depth for the point to count as visible."""
    out: Path | None = None
    """Also write the figures to this JSON file, and beside it (same name, .png) the confidence of visible and
    occluded sightings: whether the confidence flags occlusion."""


def check_trained_on(visual_run: Path, store: EpisodeStore) -> None:
    """Refuse a dataset other than the one `visual_run` trained on (`keydyn.runs.trained_on_other_data`): its
    seeded split would hold out episodes the network trained on."""
    if trained_on_other_data(read_json(Path(visual_run) / "last.json"), store):
        raise ValueError(
            f"{visual_run} trained on other episodes than {store.path} holds (grown or collected anew since), so the "
            "episodes it held out cannot be told from those it trained on: give --dataset the dataset as it was "
            "when the visual run trained"
        )


def keypoint_accuracy(config: KeypointAccuracyConfig) -> dict:
    """The figures (3D errors of visible points, confidence of visible and occluded points, the machine).

    Raises:
        ValueError: neither --run nor --visual-run is given, or the dataset is not the one the visual run trained on.
    """
    if config.run is not None and (
        config.visual_run is not None or config.latent != "sds" or config.keypoints != KeypointConfig()
    ):
        raise ValueError(
            "--run measures that run's own references and settings: drop --visual-run, --latent and --keypoints.*, "
            "or give --visual-run alone to choose references here"
        )
    if config.run is None and (config.keypoints.rigid_outlier_mm > 0 or config.keypoints.rigid_project):
        raise ValueError(
            "the rigid filter is fitted when a dynamics run is trained: measure such a run with --run instead of "
            "--keypoints.rigid-outlier-mm / --keypoints.rigid-project"
        )
    store = open_dataset(config.dataset)
    if config.run is not None:
        net, visual_run = load_run_visual(config.run)
        check_trained_on(visual_run, store)
        references = References.load(config.run)
        bf16 = run_locates_in_bf16(config.run)
        rigid = RigidFilter.load(config.run)
    elif config.visual_run is not None:
        visual_run = config.visual_run
        check_trained_on(visual_run, store)
        net, eta = load_visual(visual_run, config.keypoints.checkpoint)
        references = choose_references(net, store, config.keypoints, spatial=config.latent == "sds", eta=eta)
        bf16 = config.keypoints.bf16
        rigid = None
    else:
        raise ValueError("give --run (a dynamics run with a descriptor latent) or --visual-run (a descriptor run)")
    visual = read_json(visual_run / "config.json", ("val_fraction", "seed"))
    _, held_out = split_episodes(store.num_episodes, visual["val_fraction"], visual["seed"])
    frames = np.concatenate([np.arange(*store.episode_range(int(episode))) for episode in held_out])
    if len(frames) > config.max_frames:
        frames = frames[np.linspace(0, len(frames) - 1, config.max_frames).round().astype(int)]
    errors = keypoint_errors(
        net,
        store,
        references,
        frames,
        batch_size=config.keypoints.batch_size,
        bf16=bf16,
        visibility_tolerance=config.visibility_tolerance,
        rigid=rigid,
    )
    figures = {
        "measurement": "keypoint_accuracy",
        "dataset": str(config.dataset),
        "visual_run": str(visual_run),
        "references": str(config.run) if config.run is not None else f"{config.latent} chosen here",
        "depth_mode": references.depth_mode,
        "cameras": list(references.cameras),
        "rigid_outlier_mm": None if rigid is None else 1000.0 * rigid.threshold,
        "rigid_project": None if rigid is None else rigid.project,
        "bf16": bf16,
        "held_out_episodes": len(held_out),
        **errors.summary(),
        "machine": machine(),
    }
    if config.out is not None:
        write_json_atomic(config.out, figures)
        title = f"{figures['references']} on {Path(config.dataset).name}: {len(frames)} held-out frames"
        plot_confidence_visibility(errors.confidence, errors.visible, Path(config.out).with_suffix(".png"), title)
    return figures


def plot_confidence_visibility(confidence: np.ndarray, visible: np.ndarray, path: Path, title: str) -> Path:
    """Histograms of the (F, K) keypoint confidences of visible and of occluded sightings (each normalised), with
    their means and `confidence_auc` (the chance that a visible sighting is the more confident one)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4))
    bins = np.linspace(0.0, 1.0, 26)
    for mask, label, color in ((visible, "visible", "tab:blue"), (~visible, "occluded", "tab:red")):
        values = confidence[mask]
        if len(values):
            label = f"{label}: {len(values)} sightings, mean {values.mean():.2f}"
            axis.hist(values, bins, density=True, alpha=0.5, color=color, label=label)
    auc = confidence_auc(confidence[visible], confidence[~visible]) if visible.any() and (~visible).any() else None
    axis.set_xlabel("keypoint confidence (eq. 15)")
    axis.set_ylabel("density")
    axis.set_title(title + ("" if auc is None else f"\nAUC visible > occluded: {auc:.2f}"), fontsize=9)
    axis.legend()
    return save_figure(figure, path)

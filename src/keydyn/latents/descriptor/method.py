"""The descriptor latent methods of a dynamics run: made when training, rebuilt as an encoder at control time.

A dynamics run with a descriptor latent (ds, sds, wds, wsds) holds, besides the dynamics files:
    references.json/.safetensors   the reference descriptors, their pixels, camera and reference frame
    rigid_filter.json/.safetensors the keypoints' rigid template and outlier threshold (--keypoints.rigid-outlier-mm)
    visual_network.json            the visual run (its path relative to this run), its checkpoint and the SHA-256
                                   of its weights
    keypoints.png                  the references on the reference image (paper figure 3)
    keypoint_cache/                the keypoints of every dataset frame (keypoints-<hash>.safetensors), keyed by
                                   the network, the references, the precision and the dataset
                                   (--keypoints.cache-dir puts them elsewhere, to share them between runs)
and, for wds / wsds, the weights' alpha inside the dynamics checkpoints (under `weights.PARAMETER_PREFIX`).
Nothing is written into the visual run, and a dynamics run moved together with its visual run still loads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keydyn.data.store import EpisodeStore
from keydyn.files import read_json, write_json_atomic
from keydyn.latents.base import KeypointLatent, LatentLayout, SourceChangedError
from keydyn.latents.descriptor.dataset import dataset_keypoints, network_hash, require_lifted
from keydyn.latents.descriptor.encoder import DescriptorEncoder
from keydyn.latents.descriptor.pictures import write_reference_picture
from keydyn.latents.descriptor.references import References, choose_references
from keydyn.latents.descriptor.rigid import RigidFilter, rigid_template
from keydyn.latents.descriptor.weights import PARAMETER_PREFIX, KeypointWeights
from keydyn.latents.registry import register_latent
from keydyn.sim.config import TaskConfig
from keydyn.vision.network import DescriptorNet
from keydyn.vision.train import load_descriptor_net

KEYPOINT_CACHE = "keypoint_cache"  # directory of cached dataset keypoints inside a dynamics run


class DescriptorLatent(KeypointLatent):
    """Keypoints located by a descriptor network (--visual-run), chosen by --keypoints.*.

    spatial: choose the K* most confident, spread-apart references (SDS) rather than K random ones (DS).
    weighted: learn convex combinations of the keypoints jointly with the dynamics (WDS / WSDS).
    """

    settings = ("visual_run", "keypoints")
    parameter_prefix = PARAMETER_PREFIX

    def __init__(self, name: str, spatial: bool, weighted: bool) -> None:
        self.name, self.label = name, name.upper()
        self.spatial, self.weighted = spatial, weighted

    def __repr__(self) -> str:
        return f"DescriptorLatent({self.name!r}, spatial={self.spatial}, weighted={self.weighted})"

    def check_config(self, config: Any) -> None:
        if config.visual_run is None:
            raise ValueError(
                f"--latent {self.name} locates keypoints with a descriptor network: pass --visual-run with a "
                "run directory of `keydyn train-visual`"
            )

    def check_sources(self, run_dir: Path) -> None:
        if (Path(run_dir) / "visual_network.json").exists():
            load_run_visual(run_dir)

    def dataset_latents(self, store: EpisodeStore, config: Any, out: Path) -> np.ndarray:
        """(N, 3 K + 2) float32 latents of every dataset frame: located keypoints (world, metres) and pusher xy.

        Chooses the references (or reloads those already in `out`, when a run resumes), writes them, the visual
        network's identity and keypoints.png into `out`, and caches the dataset's keypoints in `out` (or in
        --keypoints.cache-dir).
        """
        visual_run, keypoints = Path(config.visual_run), config.keypoints
        net, eta = load_visual(visual_run, keypoints.checkpoint)
        identity = {
            "visual_run": os.path.relpath(visual_run.resolve(), out.resolve()),  # relative: the runs can move together
            "checkpoint": keypoints.checkpoint,
            "network_sha256": network_hash(net),
        }
        resumed = (out / "visual_network.json").exists()
        if resumed:  # a resumed run: its references belong to that network
            trained_with = read_json(out / "visual_network.json", ("network_sha256",))["network_sha256"]
            if trained_with != identity["network_sha256"]:
                raise SourceChangedError(
                    f"the {keypoints.checkpoint} network of {visual_run} changed since {out} started; its references "
                    "and cached keypoints belong to the earlier one: train the dynamics anew in a new --out"
                )
        # Written before the references, so that references never stand without the network they were chosen with
        # (references left by a run cut before this record are chosen again: the same seed, the same choice).
        write_json_atomic(out / "visual_network.json", identity)
        if resumed and (out / "references.json").exists():
            references = References.load(out)
        else:
            references = choose_references(net, store, keypoints, self.spatial, eta)
            references.save(out)
        rgb = store.frames(f"{references.camera}/rgb", references.frame, references.frame + 1)[0]
        title = f"{self.label}: {len(references)} reference descriptors, camera {references.camera}"
        write_reference_picture(out / "keypoints.png", rgb, references, title)
        cache = out / KEYPOINT_CACHE if keypoints.cache_dir is None else keypoints.cache_dir
        points = dataset_keypoints(net, references, store, cache, keypoints.batch_size, keypoints.bf16).points
        filtered = keypoints.rigid_outlier_mm > 0
        if filtered:
            rigid = RigidFilter.load(out)  # a resumed run keeps its template
            if rigid is None:
                rigid = RigidFilter(
                    rigid_template(points), keypoints.rigid_outlier_mm / 1000.0, keypoints.rigid_project
                )
                rigid.save(out)
            unlifted = int((~torch.isfinite(points).all(dim=-1)).sum())
            points = rigid(points)[0]
            if unlifted:  # depth holes (a real camera's): placed as the encoder places them at control time
                placed = unlifted - int((~torch.isfinite(points).all(dim=-1)).sum())
                print(
                    f"keydyn: the rigid filter placed {placed} of the {unlifted} keypoints without valid depth in "
                    f"{len(points)} frames",
                    file=sys.stderr,
                )
        require_lifted(points, store, references.cameras, filtered)
        pusher = np.asarray(store.frames("pusher_position"), dtype=np.float32)
        return LatentLayout(len(references)).pack(points.numpy(), pusher).astype(np.float32)

    def make_encoder(self, run_dir: Path, task: TaskConfig, which: str) -> DescriptorEncoder:
        """The run's references, visual network and rigid filter, with the `which` checkpoint's keypoint weights
        (WDS / WSDS)."""
        return load_descriptor_encoder(run_dir, self.load_trainable(run_dir, which), (task.width, task.height))

    def trainable(self, latent_dim: int, config: Any = None) -> KeypointWeights | None:
        """WDS / WSDS: the convex keypoint weights W (latents map to z = W x before the loss)."""
        return KeypointWeights(LatentLayout.from_dim(latent_dim).num_keypoints) if self.weighted else None


def load_visual(visual_run: Path, checkpoint: str) -> tuple[DescriptorNet, float]:
    """The visual run's network (eval mode) and the descriptor kernel width eta it was trained with."""
    net = load_descriptor_net(visual_run, checkpoint)
    return net, float(read_json(Path(visual_run) / f"{checkpoint}.json", ("loss",))["loss"]["eta"])


def load_descriptor_encoder(
    run_dir: Path, weights: KeypointWeights | None, image_size: tuple[int, int] | None = None
) -> DescriptorEncoder:
    """The encoder (on the CPU) of a dynamics run with a descriptor latent: its references, visual network,
    rigid filter (if any) and the WDS / WSDS `weights`, reading images of `image_size` = (width, height) pixels
    (None: any).

    Raises:
        ValueError: the visual run's weights changed since the dynamics run was trained.
    """
    run_dir = Path(run_dir)
    net, _ = load_run_visual(run_dir)
    references, rigid = References.load(run_dir), RigidFilter.load(run_dir)
    return DescriptorEncoder(net, references, weights, run_locates_in_bf16(run_dir), rigid, image_size)


def run_locates_in_bf16(run_dir: Path) -> bool:
    """Whether a dynamics run with a descriptor latent locates its keypoints under bfloat16 (precision bf16)."""
    keypoints = read_json(Path(run_dir) / "config.json", ("keypoints",))["keypoints"]
    if "precision" in keypoints:
        return keypoints["precision"] == "bf16"
    return bool(keypoints["bf16"])  # runs made before --keypoints.precision replaced --keypoints.bf16


def load_run_visual(run_dir: Path) -> tuple[DescriptorNet, Path]:
    """The descriptor network (eval mode) a dynamics run with a descriptor latent was trained with, and the
    directory of its visual run.

    Raises:
        FileNotFoundError: `run_dir` has no visual_network.json (not a descriptor-latent run).
        SourceChangedError: the visual run's weights changed since the dynamics run was trained.
    """
    path = Path(run_dir) / "visual_network.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a run of a descriptor --latent")
    identity = read_json(path, ("visual_run", "checkpoint", "network_sha256"))
    visual_run = Path(run_dir) / identity["visual_run"]  # relative to the run (an absolute path stays as it is)
    net, _ = load_visual(visual_run, identity["checkpoint"])
    if network_hash(net) != identity["network_sha256"]:
        raise SourceChangedError(
            f"the {identity['checkpoint']} network of {identity['visual_run']} changed since {run_dir} was trained; "
            "train the dynamics anew on the current network (keydyn train-dynamics --visual-run, in a new --out)"
        )
    return net, visual_run


register_latent(DescriptorLatent("ds", spatial=False, weighted=False))
register_latent(DescriptorLatent("sds", spatial=True, weighted=False))
register_latent(DescriptorLatent("wds", spatial=False, weighted=True))
register_latent(DescriptorLatent("wsds", spatial=True, weighted=True))

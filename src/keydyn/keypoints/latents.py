"""Descriptor keypoint latents of a dynamics run: made when training, rebuilt as an encoder at control time.

A dynamics run with a descriptor latent (ds, sds, wds, wsds) holds, besides the dynamics files:
    references.json/.safetensors   the reference descriptors, their pixels, camera and reference frame
    rigid_filter.json/.safetensors the keypoints' rigid template and outlier threshold (--keypoints.rigid-outlier-mm)
    visual_network.json            the visual run, its checkpoint and the SHA-256 of its weights
    keypoints.png                  the references on the reference image (paper figure 3)
and, for wds / wsds, the weights' alpha inside the dynamics checkpoints (`keydyn.keypoints.weights`). The
keypoints of every dataset frame are cached in the visual run (keypoint_cache/keypoints-<hash>.safetensors),
keyed by the network, the references and the dataset, so runs with the same references share them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from keydyn.data.store import EpisodeStore
from keydyn.dynamics.latent import LatentLayout
from keydyn.files import write_json_atomic
from keydyn.keypoints.dataset import dataset_keypoints, network_hash
from keydyn.keypoints.encoder import DescriptorEncoder
from keydyn.keypoints.pictures import write_reference_picture
from keydyn.keypoints.references import KeypointConfig, References, choose_references
from keydyn.keypoints.rigid import RigidFilter, rigid_template
from keydyn.keypoints.weights import KeypointWeights
from keydyn.runs import checkpoint_paths
from keydyn.vision.network import DescriptorNet
from keydyn.vision.train import load_descriptor_net

DESCRIPTOR_LATENTS = ("ds", "sds", "wds", "wsds")
SPATIAL_LATENTS = ("sds", "wsds")
WEIGHTED_LATENTS = ("wds", "wsds")
KEYPOINT_CACHE = "keypoint_cache"  # directory of cached dataset keypoints inside a visual run


def load_visual(visual_run: Path, checkpoint: str) -> tuple[DescriptorNet, float]:
    """The visual run's network (eval mode) and the descriptor kernel width eta it was trained with."""
    info_path, _ = checkpoint_paths(Path(visual_run), checkpoint, "`keydyn train-visual`")
    eta = float(json.loads(info_path.read_text())["loss"]["eta"])
    return load_descriptor_net(visual_run, checkpoint), eta


def descriptor_latents(
    store: EpisodeStore, latent: str, visual_run: Path, config: KeypointConfig, out: Path
) -> np.ndarray:
    """(N, 3 K + 2) float32 latents of every dataset frame: located keypoints (world, metres) and pusher xy.

    Chooses the references (or reloads those already in `out`, when a run resumes), writes them, the visual
    network's identity and keypoints.png into `out`, and caches the dataset's keypoints in the visual run.
    """
    net, eta = load_visual(visual_run, config.checkpoint)
    if (out / "references.json").exists():
        references = References.load(out)
    else:
        references = choose_references(net, store, config, latent in SPATIAL_LATENTS, eta)
        references.save(out)
    identity = {"visual_run": str(visual_run), "checkpoint": config.checkpoint, "network_sha256": network_hash(net)}
    write_json_atomic(out / "visual_network.json", identity)
    rgb = store.frames(f"{references.camera}/rgb", references.frame, references.frame + 1)[0]
    title = f"{latent.upper()}: {len(references)} reference descriptors, camera {references.camera}"
    write_reference_picture(out / "keypoints.png", rgb, references, title)
    cache = Path(visual_run) / KEYPOINT_CACHE  # shared by every dynamics run of the same references (DS and WDS)
    points = dataset_keypoints(net, references, store, cache, config.batch_size, config.bf16).points
    if config.rigid_outlier_mm > 0:
        rigid = RigidFilter.load(out)  # a resumed run keeps its template
        if rigid is None:
            rigid = RigidFilter(rigid_template(points), config.rigid_outlier_mm / 1000.0, config.rigid_project)
            rigid.save(out)
        points = rigid(points)[0]
    pusher = np.asarray(store.frames("pusher_position"), dtype=np.float32)
    return LatentLayout(len(references)).pack(points.numpy(), pusher).astype(np.float32)


def load_descriptor_encoder(run_dir: Path, weights: KeypointWeights | None) -> DescriptorEncoder:
    """The encoder (on the CPU) of a dynamics run with a descriptor latent: its references, visual network,
    rigid filter (if any) and the WDS / WSDS `weights`.

    Raises:
        ValueError: the visual run's weights changed since the dynamics run was trained.
    """
    run_dir = Path(run_dir)
    net, _ = load_run_visual(run_dir)
    references, rigid = References.load(run_dir), RigidFilter.load(run_dir)
    return DescriptorEncoder(net, references, weights, run_locates_in_bf16(run_dir), rigid)


def run_locates_in_bf16(run_dir: Path) -> bool:
    """Whether a dynamics run with a descriptor latent locates its keypoints under bfloat16 (--keypoints.bf16)."""
    return bool(json.loads((Path(run_dir) / "config.json").read_text())["keypoints"]["bf16"])


def load_run_visual(run_dir: Path) -> tuple[DescriptorNet, Path]:
    """The descriptor network (eval mode) a dynamics run with a descriptor latent was trained with, and the
    directory of its visual run.

    Raises:
        FileNotFoundError: `run_dir` has no visual_network.json (not a descriptor-latent run).
        ValueError: the visual run's weights changed since the dynamics run was trained.
    """
    path = Path(run_dir) / "visual_network.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a run of a descriptor --latent")
    identity = json.loads(path.read_text())
    visual_run = Path(identity["visual_run"])
    net, _ = load_visual(visual_run, identity["checkpoint"])
    if network_hash(net) != identity["network_sha256"]:
        raise ValueError(
            f"the {identity['checkpoint']} network of {identity['visual_run']} changed since {run_dir} was trained; "
            "retrain the dynamics with keydyn train-dynamics --visual-run on the current network"
        )
    return net, visual_run

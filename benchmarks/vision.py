"""Vision speed: descriptor inference and keypoint localisation per frame, training images per second, and the
whole control loop with perception (image -> descriptors -> keypoints -> MPPI -> act).

Per frame, at the default 320x240 and at the paper's 640x480, 1 image at a time:
- inference: the descriptor network (default CPU network: strided ResNet-18, D = 3) on one RGB image, fp32 and
  bf16 autocast;
- localisation: K = 50 reference descriptors located in one frame (heatmaps, spatial and depth expectation,
  3D lifting) from a given descriptor image.
Training: images per second of `keydyn.vision.train.train_step` on real rendered pairs (2 pairs = 4 images a
step), fp32 and bf16, and the projected time of the default training run (its step count at that rate).
Control loop, with the shipped `top_down` SDS run (keydyn.models): rendering of both cameras, its encoder
(inference + localisation of its K* = 5 SDS keypoints, from one camera as in the paper and from both as with
--keypoints.fuse-cameras), MPPI over its dynamics (N = 1000, H = 10, bf16; M = 3 iterations a step as the paper,
and M = 1, warm-started from the last plan) and one physics step, in steps per second.

    python benchmarks/vision.py                  # 2 threads
    python benchmarks/vision.py --threads 1 --repeats 5
    python benchmarks/vision.py --device cuda    # network, localisation, training and planner on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from control_loop import time_control_loop
from keydyn.control import MPCConfig
from keydyn.control.run import load_run, run_controller
from keydyn.data.collect import CollectConfig, collect
from keydyn.machine import machine
from keydyn.models import shipped_run
from keydyn.planning import MPPIConfig
from keydyn.sim.env import PushingEnv
from keydyn.vision.keypoints import locate_keypoints
from keydyn.vision.network import DescriptorNet, rgb_to_tensor
from keydyn.vision.train import TrainVisualConfig, build_network, make_samplers, train_step


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 2) -> float:
    """Median wall-clock milliseconds of `fn()` over `repeats` calls after `warmup` untimed ones (each call waits
    for `device`'s queued work)."""
    times = []
    for index in range(warmup + repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= warmup:
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def per_frame(net: DescriptorNet, width: int, height: int, repeats: int) -> dict:
    """Inference (fp32, bf16) and K = 50 localisation milliseconds for one rendered frame of top_down, on the
    network's device."""
    env = PushingEnv("top_down", width=width, height=height)
    observation, _ = env.reset(seed=0)
    env.close()
    camera = env.task.cameras[0].name
    device = next(net.parameters()).device
    rgb = rgb_to_tensor(torch.as_tensor(observation[f"{camera}/rgb"]))[None].to(device)
    depth = torch.as_tensor(observation[f"{camera}/depth"]).to(device)
    intrinsics = torch.as_tensor(observation[f"{camera}/intrinsics"]).to(device)
    pose = torch.as_tensor(observation[f"{camera}/pose"]).to(device)
    generator = torch.Generator().manual_seed(0)
    references = torch.randn(50, net.config.descriptor_dim, generator=generator).to(device)
    with torch.inference_mode():
        fp32 = median_ms(lambda: net.infer(rgb, bf16=False), repeats, device)
        bf16 = median_ms(lambda: net.infer(rgb, bf16=True), repeats, device)
        descriptors = net.infer(rgb, bf16=True)[0]
        locate = median_ms(lambda: locate_keypoints(descriptors, references, depth, intrinsics, pose), repeats, device)
    return {
        "size": f"{width}x{height}",
        "inference_fp32_ms": round(fp32, 2),
        "inference_bf16_ms": round(bf16, 2),
        "localisation_k50_ms": round(locate, 2),
    }


def training_rate(dataset: Path, precision: str, steps: int, device: torch.device) -> dict:
    """Images per second of real training steps on `device` (pair sampling included) and the default run's
    duration."""
    config = TrainVisualConfig(dataset=dataset, out=Path("unused"), precision=precision, progress=False)
    torch.manual_seed(0)
    net = build_network(config).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    sampler, _ = make_samplers(config)
    generator = torch.Generator().manual_seed(0)
    times = []
    for index in range(steps + 1):
        start = time.perf_counter()
        train_step(net, optimizer, sampler.sample_batch(config.batch_size, generator).to(device), config, generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index:  # the first step also allocates
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "precision": precision,
        "images_per_s": round(2 * config.batch_size / seconds, 2),
        "step_s": round(seconds, 3),
        "default_steps": config.steps,
        "default_training_min": round(config.steps * seconds / 60, 1),
    }


def control_loop_with_perception(steps: int, fuse_cameras: bool, iterations: int, device: torch.device) -> dict:
    """Steps per second of render -> encoder -> MPPI -> physics with the shipped `top_down` SDS run (its descriptor
    network, K* = 5 references, rigid filter and dynamics; keypoints located in both cameras and fused with
    `fuse_cameras`), MPPI N = 1000, H = 10, `iterations` a step, warm-started from the last plan; the network
    and MPPI on `device`."""
    trained = load_run(shipped_run("top_down", "sds"), device=str(device))
    encoder = trained.encoder
    if fuse_cameras:
        camera = encoder.references.camera
        others = tuple(view.name for view in trained.task.cameras if view.name != camera)
        encoder.references = dataclasses.replace(encoder.references, fused_cameras=others)
    encoder.to(device)
    mpc = MPCConfig(planner=MPPIConfig(iterations=iterations), shrinking_horizon=False, device=str(device))
    env = PushingEnv(trained.task)
    times, encode_times = time_control_loop(env, encoder, run_controller(trained, mpc), steps)
    env.close()
    return {
        "cameras": len(encoder.references.cameras),
        "mppi_iterations": iterations,
        "control_loop_with_perception_hz": round(1.0 / statistics.median(times), 2),
        "encoder_ms": round(1e3 * statistics.median(encode_times), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per figure (median reported)")
    parser.add_argument("--train-steps", type=int, default=6, help="timed training steps per precision")
    parser.add_argument("--loop-steps", type=int, default=20, help="timed control-loop steps")
    parser.add_argument("--device", default="cpu", help="where the networks and the planner run: cpu, cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    config = TrainVisualConfig(dataset=Path("unused"), out=Path("unused"))
    torch.manual_seed(0)
    net = build_network(config).to(device).eval()
    frames = [per_frame(net, w, h, args.repeats) for w, h in ((320, 240), (640, 480))]
    with tempfile.TemporaryDirectory() as directory:
        dataset = Path(directory) / "top_down"
        collect(CollectConfig(out=dataset, episodes=3, steps=12, workers=1, progress=False))
        training = [training_rate(dataset, precision, args.train_steps, device) for precision in ("fp32", "bf16")]
    document = {
        "benchmark": "vision",
        "network": dataclasses.asdict(config.network),
        "settings": {
            "threads": args.threads,
            "repeats": args.repeats,
            "device": args.device,
            "torch": torch.__version__,
        },
        "per_frame": frames,
        "training_320x240": training,
        "control_loop": [
            control_loop_with_perception(args.loop_steps, fuse, iterations, device)
            for iterations in (MPPIConfig().iterations, 1)
            for fuse in (False, True)
        ],
        "machine": machine(),
    }
    one_camera = [loop for loop in document["control_loop"] if loop["cameras"] == 1]
    document["target"] = {
        "what": "control loop with perception (both cameras rendered, keypoints located in one), Hz",
        "required": 20,
        "measured": {
            f"mppi_iterations_{loop['mppi_iterations']}": loop["control_loop_with_perception_hz"] for loop in one_camera
        },
        "met": any(loop["control_loop_with_perception_hz"] >= 20 for loop in one_camera),
    }
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()

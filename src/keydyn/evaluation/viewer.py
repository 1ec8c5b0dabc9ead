"""The loop in 3D (the paper's figure 1), with rerun: a recording a user opens later, or a live view.

Each recorded episode becomes one rerun recording: for every control step, the world points of the target (green),
the observed latent (red) and the plan's prediction (yellow paths), the pusher and its commanded velocity, and each
camera as a pinhole at its pose with its image, so that the viewer draws the 3D points over the images too.

rerun (https://rerun.io) is an optional extra, `pip install -e ".[viewer]"`: a maintained viewer for robotics
logs that plays a file back along its timelines, shows images, pinholes and 3D points in one scene, and takes a
live stream from several processes, which videos cannot do. Open a file with `rerun FILE.rrd`; watch live by
starting `rerun` and passing its address (printed by it; rerun's default `rerun+http://127.0.0.1:9876/proxy`).
"""

from __future__ import annotations

import importlib.util
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keydyn.evaluation.scene import CURRENT_COLOUR, GOAL_COLOUR, PREDICTED_COLOUR, SceneFrame

APPLICATION = "keydyn"
VIEWER_MISSING = 'the 3D view needs rerun: install keydyn\'s viewer extra (pip install -e ".[viewer]")'
PUSHER_COLOUR = (60, 120, 255)


@dataclass(frozen=True)
class ViewerConfig:
    """The 3D view of recorded episodes (beyond the paper; needs the `viewer` extra)."""

    save: bool = False
    """Write each recorded episode (those with videos) as a rerun file beside its video (videos/*.rrd)."""
    address: str | None = None
    """Also stream them live to a rerun viewer at this address (e.g. rerun+http://127.0.0.1:9876/proxy)."""

    def __post_init__(self) -> None:
        if self.enabled and importlib.util.find_spec("rerun") is None:
            raise ValueError(VIEWER_MISSING)

    @property
    def enabled(self) -> bool:
        return self.save or self.address is not None


def _rerun() -> Any:
    try:
        import rerun
    except ImportError as error:
        raise ImportError(VIEWER_MISSING) from error
    return rerun


class Recording:
    """One episode's rerun recording, written to `path` and/or streamed to `address`; `log` each frame (a
    `FrameSink`), then `close`. `control_dt` (seconds) spaces the frames on the "time" timeline."""

    def __init__(self, name: str, control_dt: float, path: Path | None = None, address: str | None = None) -> None:
        if path is None and address is None:
            raise ValueError("a recording needs a file path, a viewer address, or both")
        rr = _rerun()
        self.rr, self.control_dt, self.step = rr, control_dt, 0
        # A recording of its own (rerun merges recordings that share an id): the episode's name and a random suffix.
        self.stream = rr.RecordingStream(APPLICATION, recording_id=f"{name}-{uuid.uuid4().hex[:12]}")
        sinks = []
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            sinks.append(rr.FileSink(str(path)))
        if address is not None:
            sinks.append(rr.GrpcSink(address))
        self.stream.set_sinks(*sinks)
        self.stream.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)

    def log(self, frame: SceneFrame) -> None:
        """Log `frame` as the next control step."""
        rr, stream = self.rr, self.stream
        stream.set_time("step", sequence=self.step)
        stream.set_time("time", duration=self.step * self.control_dt)
        self.step += 1
        for name, image, K, pose in zip(frame.cameras, frame.images, frame.intrinsics, frame.poses, strict=True):
            entity = f"world/cameras/{name}"
            stream.log(entity, rr.Transform3D(translation=pose[:3, 3], mat3x3=pose[:3, :3]))
            height, width = image.shape[:2]
            stream.log(
                entity, rr.Pinhole(image_from_camera=K, resolution=[width, height], camera_xyz=rr.ViewCoordinates.RDF)
            )
            stream.log(f"{entity}/image", rr.Image(image))
        for entity, points, colour in (
            ("world/keypoints/target", frame.target, GOAL_COLOUR),
            ("world/keypoints/current", frame.current, CURRENT_COLOUR),
        ):
            stream.log(entity, rr.Points3D(_points(points), colors=colour, radii=0.004))
        paths = np.zeros((0, 2, 3)) if frame.predicted is None else np.swapaxes(frame.predicted, 0, 1)
        stream.log("world/keypoints/predicted", rr.LineStrips3D(paths, colors=PREDICTED_COLOUR, radii=0.0015))
        pusher = np.append(frame.pusher, 0.0)
        stream.log("world/pusher", rr.Points3D(pusher[None], colors=PUSHER_COLOUR, radii=0.01))
        velocity = np.zeros((0, 3)) if frame.action is None else np.append(frame.action, 0.0)[None]
        stream.log("world/pusher/command", rr.Arrows3D(origins=pusher[None][: len(velocity)], vectors=velocity))

    def close(self) -> None:
        self.stream.flush()
        self.stream.disconnect()


def _points(points: np.ndarray | None) -> np.ndarray:
    """(P, 3) points, or none (an empty (0, 3) batch clears the entity at this step)."""
    return np.zeros((0, 3)) if points is None else np.asarray(points, dtype=np.float64)


def open_recording(config: ViewerConfig, name: str, control_dt: float, path: Path) -> Recording | None:
    """The recording of one episode that `config` asks for (file `path` when saving), or None."""
    if not config.enabled:
        return None
    return Recording(name, control_dt, path if config.save else None, config.address)

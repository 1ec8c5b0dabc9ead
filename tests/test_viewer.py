"""The 3D view of the loop: `keydyn evaluate --viewer.save` writes a rerun recording of each recorded episode."""

from __future__ import annotations

import json

import numpy as np
from rerun.chunk import RrdReader

from keydyn.cli import main
from keydyn.evaluation.scene import capture_frame, draw_frame
from keydyn.sim.config import task_config
from keydyn.sim.env import PushingEnv

FAST_MPC = ["--mpc.grid-headings", "36", "--mpc.horizon", "4", "planner:mppi", "--num-samples", "64"]


def _columns(path) -> dict[str, dict[str, list]]:
    """entity -> column -> values over the recording's "step" rows."""
    columns: dict[str, dict[str, list]] = {}
    for chunk in RrdReader(path).store().stream():
        if chunk.is_static:
            continue
        batch = chunk.to_record_batch()
        entity = columns.setdefault(chunk.entity_path, {})
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            if name != "log_time":  # wall-clock nanoseconds
                entity.setdefault(name.split(":")[-1], []).extend(column.to_pylist())
    return columns


def test_evaluate_saves_a_recording_of_each_recorded_episode(small_run, tmp_path):
    out = tmp_path / "eval"
    args = ["evaluate", "--run", str(small_run), "--out", str(out), "--episodes", "2", "--videos", "1"]
    assert main([*args, "--workers", "0", "--viewer.save", "--no-progress", *FAST_MPC]) == 0
    assert not (out / "videos" / "episode_001.rrd").exists()
    steps = json.loads((out / "episodes.jsonl").read_text().splitlines()[0])["steps"]
    columns = _columns(out / "videos" / "episode_000.rrd")
    task = json.loads((small_run / "task.json").read_text())
    for camera in task["cameras"]:
        entity = columns[f"/world/cameras/{camera['name']}"]
        assert len(entity["translation"]) == steps + 1  # one frame per planned step and the final scene
        np.testing.assert_allclose(entity["translation"][0][0], camera["position"], atol=1e-6)
        assert len(columns[f"/world/cameras/{camera['name']}/image"]["step"]) == steps + 1
    current = columns["/world/keypoints/current"]["positions"]
    target = columns["/world/keypoints/target"]["positions"]
    assert len(current) == len(target) == steps + 1
    for points in (*current, *target):  # GT 3D keypoints: corners of the box lying on the table
        heights = np.asarray(points)[:, 2]
        assert np.all((heights > -0.005) & (heights < 0.05))
    predicted = columns["/world/keypoints/predicted"]["strips"]
    assert len(predicted) == steps + 1 and len(predicted[-1]) == 0  # no plan is made from the final scene
    assert all(len(strip) == 5 for strip in predicted[0])  # each keypoint's path over the 4-step plan and its start
    pusher = np.asarray(columns["/world/pusher"]["positions"])[:, 0]
    assert len(pusher) == steps + 1 and np.all(np.abs(pusher[:, :2]) < 0.4)


def test_video_frames_draw_the_points_where_the_camera_sees_them():
    """A point drawn at the box's true centre lands on the box's pixels in every camera panel."""
    env = PushingEnv(task_config("top_down", width=96, height=72))
    observation, info = env.reset(seed=3)
    centre = np.asarray(info["object_position"])[None]
    frame = capture_frame(env, observation["pusher_position"], None, centre)
    picture = draw_frame(frame)
    scale = picture.shape[0] // 72
    for index, camera in enumerate(env.task.camera_names):
        panel = picture[:, index * 96 * scale : (index + 1) * 96 * scale]
        red = (panel[..., 0] > 200) & (panel[..., 1] < 80) & (panel[..., 2] < 80)
        rows, cols = np.nonzero(red)
        v, u = int(rows.mean() // scale), int(cols.mean() // scale)
        assert observation[f"{camera}/mask"][v, u], f"{camera}: the drawn centre is off the box"
    env.close()

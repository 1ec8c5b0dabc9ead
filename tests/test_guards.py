"""Inputs guarded at the boundary: observations, the keypoint locator, the controller's latents, goals and steps,
and the closed loops' safe stop; with the real simulator, a real descriptor network and a small trained GT 3D run."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from keydyn.control import MPCConfig, MPCController, terminal_cost, tracking_cost
from keydyn.control.run import control_setup
from keydyn.evaluation.episodes import reach_goal
from keydyn.evaluation.goals import GoalPairConfig, goal_pair
from keydyn.evaluation.report import markdown_table, summarize
from keydyn.evaluation.reproduce import method_row
from keydyn.evaluation.tracking import pair_push, record_demonstration, track
from keydyn.latents.descriptor.encoder import DescriptorEncoder
from keydyn.latents.descriptor.references import References
from keydyn.planning import MPPIConfig
from keydyn.sim.env import PushingEnv
from keydyn.sim.observations import FORMAT, ObservationError, check_observation
from keydyn.vision.heatmap import DESCRIPTOR_ETA, heatmap_expectations
from keydyn.vision.keypoints import locate_keypoints, sample_reference_descriptors
from keydyn.vision.network import DescriptorNet, DescriptorNetConfig, rgb_to_tensor

from .conftest import SMALL

SIZE = (SMALL["width"], SMALL["height"])
CAMERA = "top_down"  # the first camera of the top_down task
FAST_MPC = MPCConfig(planner=MPPIConfig(num_samples=64, iterations=2), grid_headings=36)


@pytest.fixture(scope="module")
def scene() -> tuple[dict, dict, tuple[str, ...]]:
    """A real top_down observation at 96x72, its info and the task's cameras."""
    env = PushingEnv("top_down", **SMALL)
    observation, info = env.reset(seed=0)
    env.close()
    return observation, info, tuple(camera.name for camera in env.task.cameras)


def changed(observation: dict, **entries) -> dict:
    """A copy of `observation` with entries (keys with "/" written "__") replaced, or removed where None."""
    copy = dict(observation)
    for key, value in entries.items():
        key = key.replace("__", "/")
        if value is None:
            del copy[key]
        else:
            copy[key] = value
    return copy


def refused(check, observation: dict) -> str:
    """The one-line message of the ObservationError `check(observation)` raises."""
    with pytest.raises(ObservationError) as caught:
        check(observation)
    message = str(caught.value)
    assert "\n" not in message and FORMAT in message
    return message


def test_observations_with_sensor_holes_pass_and_broken_ones_are_refused_with_the_fix(scene):
    observation, _, cameras = scene

    def check(candidate):
        check_observation(candidate, cameras, SIZE)

    check(observation)
    depth, rgb = observation[f"{CAMERA}/depth"], observation[f"{CAMERA}/rgb"]
    holes = depth.copy()
    holes[10:14, 20:30], holes[40, 50], holes[0, :5] = np.nan, np.inf, 0.0  # as real depth sensors give
    check(changed(observation, top_down__depth=holes))

    no_depth = refused(check, changed(observation, top_down__depth=np.full_like(depth, np.nan)))
    assert "observation top_down/depth has no valid depth (every pixel is NaN, inf or <= 0)" in no_depth
    float_rgb = refused(check, changed(observation, top_down__rgb=rgb.astype(np.float32) / 255))
    assert "top_down/rgb is float32 with values 0.0431 to 1, not uint8 0-255" in float_rgb
    assert "(rgb * 255).round().astype(np.uint8)" in float_rgb
    missing = refused(check, changed(observation, top_down__depth=None))
    assert missing.startswith("the observation has no top_down/depth (its keys: ") and "give top_down/depth" in missing
    transposed = refused(check, changed(observation, top_down__rgb=rgb.transpose(1, 0, 2)))
    assert "top_down/rgb has shape (96, 72, 3), not (72, 96, 3) (the camera's 96x72)" in transposed
    cropped = refused(check, changed(observation, top_down__depth=depth[:70]))
    assert "top_down/depth has shape (70, 96), the RGB image (72, 96)" in cropped
    millimetres = refused(check, changed(observation, top_down__depth=(1000 * depth).astype(np.uint16)))
    assert "top_down/depth is uint16, not float z-depth in metres" in millimetres and "/ 1000" in millimetres
    pusher = refused(check, changed(observation, pusher_position=np.array([0.1, np.nan], np.float32)))
    assert "pusher_position is float32 (2,) with NaN or inf; give a finite (2,) world xy" in pusher
    pose = refused(check, changed(observation, top_down_rotated__pose=np.eye(3)))
    assert "top_down_rotated/pose is float64 (3, 3); give a finite (4, 4) T_world_camera" in pose
    no_images = {key: value for key, value in observation.items() if not key.startswith(f"{CAMERA}/")}
    assert "give camera top_down's images (PushingEnv: images=True)" in refused(check, no_images)


def test_the_descriptor_encoder_refuses_bad_observations_and_keypoints_without_depth(scene):
    observation, info, _ = scene
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = DescriptorNet(DescriptorNetConfig("resnet18", 16, "strided", 8, width=16)).eval()
    descriptors = net.infer(rgb_to_tensor(torch.as_tensor(observation[f"{CAMERA}/rgb"]))[None])[0]
    mask = torch.as_tensor(observation[f"{CAMERA}/mask"]).bool()
    sampled, uv = sample_reference_descriptors(descriptors, mask, 5, torch.Generator().manual_seed(0))
    references = References(sampled, uv, torch.full((5,), float("nan")), CAMERA, 0, DESCRIPTOR_ETA, "pixel")
    encoder = DescriptorEncoder(net, references, image_size=SIZE)
    assert np.isfinite(encoder.encode(observation, info)).all()

    def encode(candidate):
        encoder.encode(candidate, info)

    depth = observation[f"{CAMERA}/depth"]
    assert "has no top_down/depth" in refused(encode, changed(observation, top_down__depth=None))  # was a KeyError
    float_rgb = changed(observation, top_down__rgb=observation[f"{CAMERA}/rgb"] / 255.0)  # was read as dark
    assert "(rgb * 255).round().astype(np.uint8)" in refused(encode, float_rgb)
    assert "has no valid depth" in refused(encode, changed(observation, top_down__depth=np.full_like(depth, np.nan)))
    corner = np.full_like(depth, np.nan)
    corner[:3, :3] = depth[:3, :3]  # valid depth only far from the keypoints: was their depth, silently
    lost = refused(encode, changed(observation, top_down__depth=corner))
    assert "keypoints 0, 1, 2, 3, 4 of 5 have no depth: less than 1% of their heatmaps' weight lies on" in lost
    with pytest.raises(ValueError, match=r"takes uint8 0-255 RGB, got torch.float32 .*\.round\(\)\.to\(torch.uint8\)"):
        rgb_to_tensor(torch.rand(2, 4, 3))


def test_a_keypoint_whose_heatmap_lies_on_a_depth_hole_has_no_depth():
    """An object (descriptor 20, depth 0.9 m) on a table (descriptor 0, depth 1 m): a hole over the whole object
    leaves the keypoint without depth, where eq. 11 alone would give it the table's far from the heatmap."""
    height, width = 24, 32
    descriptors = torch.zeros(1, height, width)
    descriptors[0, 8:16, 10:20] = 20.0
    depth = torch.ones(height, width)
    depth[8:16, 10:20] = 0.9
    intrinsics = torch.tensor([[30.0, 0.0, 15.5], [0.0, 30.0, 11.5], [0.0, 0.0, 1.0]])
    reference = torch.tensor([[20.0]])
    for mode in ("expectation", "pixel"):

        def located(depth_image: torch.Tensor, mode: str = mode):
            return locate_keypoints(descriptors, reference, depth_image, intrinsics, torch.eye(4), depth_mode=mode)

        assert float(located(depth).depth[0]) == pytest.approx(0.9, abs=1e-4)
        partial = depth.clone()
        partial[8:16, 10:15] = float("nan")  # a hole over half of the object is left out
        assert float(located(partial).depth[0]) == pytest.approx(0.9, abs=1e-4)
        whole = depth.clone()
        whole[8:16, 10:20] = float("nan")
        assert torch.isnan(located(whole).points_world).all()
    _, tails = heatmap_expectations(descriptors[None], reference, whole[None])  # eq. 11 alone: the table's depth
    assert float(tails[0, 0]) == pytest.approx(1.0)


def test_the_controller_refuses_non_finite_latents_and_goals_and_no_steps_left(small_run):
    setup = control_setup(small_run, None, "best", FAST_MPC)
    observation, info = setup.env.reset(seed=1)
    setup.encoder.reset(observation, info)
    latent = setup.encoder.encode(observation, info)
    controller = setup.controller
    goal = torch.as_tensor(latent[controller.latent_part] + 0.05)
    cost = terminal_cost(goal, controller.state_part)
    controller.reset(latent, seed=0)
    assert np.isfinite(controller.act(latent, lambda horizon: cost, steps_left=5)).all()

    bad = latent.copy()
    bad[3], bad[13] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"the latent entries 3 \(nan\), 13 \(inf\) are not finite"):
        controller.act(bad, lambda horizon: cost, steps_left=5)
    with pytest.raises(ValueError, match=r"the latent entries 3 \(nan\)"):
        controller.reset(bad, seed=0)
    with pytest.raises(ValueError, match=r"the latent has shape \(12,\), not \(14,\)"):
        controller.act(latent[:12], lambda horizon: cost, steps_left=5)
    nan_goal = goal.clone()
    nan_goal[2] = float("nan")
    with pytest.raises(ValueError, match=r"the goal entries 2 \(nan\) of \(12,\) are not finite; observe the goal"):
        controller.act(latent, lambda horizon: terminal_cost(nan_goal, controller.state_part), steps_left=5)
    reference = goal.repeat(3, 1)
    reference[1, 0] = float("inf")
    with pytest.raises(ValueError, match=r"the reference entries \(1, 0\) \(inf\) of \(3, 12\) are not finite"):
        tracking_cost(reference, controller.state_part)
    for steps_left in (0, -1):
        with pytest.raises(ValueError, match=f"steps_left is {steps_left}; give the control steps left"):
            controller.act(latent, lambda horizon: cost, steps_left=steps_left)


class FaultyEnv(PushingEnv):
    """The real environment, whose observation number `fault_at` (counting every reset's and step's from 0) has a
    NaN pusher position, as a failed sensor reading; it keeps every command it was sent."""

    def __init__(self, task, fault_at: int) -> None:
        super().__init__(task, images=False)
        self.fault_at, self.observations, self.commands = fault_at, 0, []

    def _observation(self) -> dict[str, np.ndarray]:
        observation = super()._observation()
        if self.observations == self.fault_at:
            observation["pusher_position"] = np.full(2, np.nan, np.float32)
        self.observations += 1
        return observation

    def step(self, action):
        self.commands.append(np.asarray(action))
        return super().step(action)


def test_an_invalid_observation_stops_the_pusher_and_fails_the_episode(small_run):
    setup = control_setup(small_run, None, "best", FAST_MPC)
    pair = goal_pair(setup.env, GoalPairConfig(push_steps=(8,)), 0)
    episode = reach_goal(setup.env, setup.encoder, setup.controller, pair, seed=0)
    assert episode.fault == "" and episode.steps == 8 and len(episode.latents) == 9

    env = FaultyEnv(setup.env.task, fault_at=4)  # the goal's, the start's, then the one after the 3rd step
    stopped = reach_goal(env, setup.encoder, setup.controller, pair, seed=0)
    assert stopped.fault.startswith("observation pusher_position is float32 (2,) with NaN or inf; give a finite")
    assert stopped.steps == 4 and len(stopped.latents) == 3  # 3 planned steps, then the stop; 3 latents accepted
    np.testing.assert_array_equal(stopped.actions[-1], [0.0, 0.0])
    assert np.abs(stopped.actions[:3]).max() > 0.05  # it was pushing
    np.testing.assert_array_equal(env.commands[-1], [0.0, 0.0])  # the stop was sent to the environment
    handles = env.handles
    assert np.abs(env.data.qvel[handles.pusher_qvel : handles.pusher_qvel + 2]).max() < 0.02  # m/s: standing still

    goal_refused = reach_goal(FaultyEnv(setup.env.task, fault_at=0), setup.encoder, setup.controller, pair, seed=0)
    assert goal_refused.fault.startswith("the goal: observation pusher_position") and goal_refused.steps == 0
    start_refused = reach_goal(FaultyEnv(setup.env.task, fault_at=1), setup.encoder, setup.controller, pair, seed=0)
    assert start_refused.steps == 1 and not np.abs(start_refused.actions).any() and len(start_refused.latents) == 0

    rows = [episode.row(), stopped.row(), goal_refused.row()]
    assert json.loads(json.dumps(rows))[1]["fault"] == stopped.fault
    summary = summarize(rows)
    assert summary["stopped"] == 2 and summary["stop_reasons"] == {stopped.fault: 1, goal_refused.fault: 1}
    on_goal = [{**row, "final_position_error_cm": 0.0, "final_angle_error_deg": 0.0} for row in rows]
    assert summarize(on_goal)["success_rate"] == pytest.approx(1 / 3)  # a stopped episode fails wherever it ends
    table = markdown_table([("GT 3D (MPPI)", summary)])
    assert "GT 3D (MPPI): 2 of 3 episodes stopped on a refused observation or plan (zero velocity, counted as " in table
    assert f"1 x {stopped.fault}" in table

    demo = record_demonstration(setup.env, setup.encoder, *pair_push(pair))
    tracked = track(FaultyEnv(setup.env.task, fault_at=3), setup.encoder, setup.controller, demo, seed=0)
    assert tracked.fault.startswith("observation pusher_position") and tracked.steps == 4  # 3 steps, the stop
    np.testing.assert_array_equal(tracked.actions[-1], [0.0, 0.0])


class EndsOnTheFault(FaultyEnv):
    """As FaultyEnv, and the step that gives the refused observation also ends the episode (the box fell off)."""

    def step(self, action):
        observation, reward, terminated, truncated, info = super().step(action)
        if self.observations - 1 == self.fault_at:
            return observation, reward, True, truncated, {**info, "termination": "out_of_bounds"}
        return observation, reward, terminated, truncated, info


def test_an_episode_ended_by_the_step_whose_observation_is_refused_keeps_its_termination(small_run):
    setup = control_setup(small_run, None, "best", FAST_MPC)
    pair = goal_pair(setup.env, GoalPairConfig(push_steps=(8,)), 0)
    env = EndsOnTheFault(setup.env.task, fault_at=4)
    ended = reach_goal(env, setup.encoder, setup.controller, pair, seed=0)
    assert ended.fault.startswith("observation pusher_position") and ended.termination == "out_of_bounds"
    assert ended.steps == 3 and len(env.commands) == 3  # no stop sent to an environment that has ended
    assert ended.row()["termination"] == "out_of_bounds"


def test_a_model_that_predicts_nan_stops_its_episode_as_a_failure(small_run):
    setup = control_setup(small_run, None, "best", FAST_MPC)
    pair = goal_pair(setup.env, GoalPairConfig(push_steps=(6,)), 0)
    model = copy.deepcopy(setup.controller.model)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    stopped = reach_goal(setup.env, setup.encoder, MPCController(model, FAST_MPC), pair, seed=0)
    assert stopped.fault.startswith("PlanError: episodes [0]: MPCController (keydyn/control/mpc.py): the dynamics")
    assert stopped.steps == 1 and len(stopped.latents) == 1  # no plan: the stop, from the start
    np.testing.assert_array_equal(stopped.actions[-1], [0.0, 0.0])
    assert summarize([stopped.row()])["stopped"] == 1


def test_reproduce_counts_stopped_episodes_as_failures(tmp_path):
    rows = [
        {"index": 0, "final_position_error_cm": 1.0, "final_angle_error_deg": 5.0, "fault": ""},
        {"index": 1, "final_position_error_cm": 1.0, "final_angle_error_deg": 5.0, "fault": "the goal: ..."},
        {"index": 2, "final_position_error_cm": 1.0, "final_angle_error_deg": 5.0},  # a row of older keydyn
    ]
    summary = {
        "success_threshold": {"position_cm": 3.0, "angle_deg": 30.0},
        "initial_position_error_cm": {"mean": 10.0},
        "initial_angle_error_deg": {"mean": 30.0},
    }
    (tmp_path / "results.json").write_text(json.dumps({"episodes": rows, "summary": summary}))
    assert method_row([tmp_path])["success_rate"] == pytest.approx(2 / 3)

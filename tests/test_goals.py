"""Start/goal pairs and pose errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keydyn.evaluation import GoalPairConfig, angle_between, make_goal_pairs, pose_errors
from keydyn.evaluation.episodes import ClosedLoopRun
from keydyn.latents.gt3d import rotate_by_quaternions
from keydyn.sim.env import PushingEnv, quaternion_multiply, yaw_quaternion


def test_angle_errors_wrap():
    a, b = yaw_quaternion(math.radians(179)), yaw_quaternion(math.radians(-179))
    assert math.degrees(angle_between(a, b)) == pytest.approx(2.0, abs=1e-6)
    assert angle_between(a, -a) == pytest.approx(0.0, abs=1e-6)  # q and -q are the same rotation
    distance, angle = pose_errors(np.zeros((2, 3)), np.stack([a, a]), np.ones((2, 3)), np.stack([b, a]))
    np.testing.assert_allclose(distance, [math.sqrt(3)] * 2)
    np.testing.assert_allclose(np.degrees(angle), [2.0, 0.0], atol=1e-6)


def test_position_errors_are_measured_at_the_objects_centre():
    """A mug turned 90 deg about the middle of its axis (frame at its base's centre, 10 cm long) has not moved."""
    centre = np.array([0.0, 0.0, 0.05])
    on_side = np.array([math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0])  # 90 deg about x: axis along -y
    turned = quaternion_multiply(yaw_quaternion(math.pi / 2), on_side)
    base, turned_base = np.array([0.0, 0.05, 0.04]), np.array([-0.05, 0.0, 0.04])  # both with the middle at (0, 0)
    distance, angle = pose_errors(base, on_side, turned_base, turned, centre)
    assert distance == pytest.approx(0.0, abs=1e-12) and math.degrees(angle) == pytest.approx(90.0)
    distance, _ = pose_errors(base, on_side, turned_base, turned)  # at the frame's origin instead
    assert distance == pytest.approx(0.05 * math.sqrt(2))
    # a batch of poses, each with its own centre (the second mug 6 cm long: its middle 1 cm nearer the base)
    distance, _ = pose_errors(
        np.stack([base, base]),
        np.stack([on_side, on_side]),
        np.stack([turned_base, turned_base]),
        np.stack([turned, turned]),
        np.stack([centre, [0.0, 0.0, 0.03]]),
    )
    np.testing.assert_allclose(distance, [0.0, 0.02 * math.sqrt(2)], atol=1e-12)


def test_goal_pairs_are_deterministic_far_enough_and_replayable():
    env = PushingEnv("top_down", width=64, height=48)
    config = GoalPairConfig(seed=3)
    pairs = make_goal_pairs(env, config, 4)
    again = make_goal_pairs(env, config, 4)
    assert [p.push_steps for p in pairs] == [10, 15, 10, 15]
    for pair, same in zip(pairs, again, strict=True):
        assert np.array_equal(pair.goal_state, same.goal_state)
        distance, angle = pair.initial_errors
        assert distance >= 0.05 or angle >= math.radians(15)
        assert np.all(np.abs(pair.start_position[:2]) <= 0.2 + 1e-9)
    env.set_sim_state(pairs[0].goal_state)  # the stored goal state restores the goal pose
    position, quaternion = env.object_pose()
    np.testing.assert_array_equal(position, pairs[0].goal_position)
    np.testing.assert_array_equal(quaternion, pairs[0].goal_quaternion)
    other = make_goal_pairs(env, GoalPairConfig(seed=4), 1)
    assert not np.array_equal(other[0].start_state, pairs[0].start_state)
    env.close()


def test_a_mug_pairs_look_is_drawn_apart_from_its_pose():
    """A pair's mug instance, texture and colour come from a stream apart from its start pose and push: drawn
    from the same seed, the red channel followed the start x exactly and the texture the push's heading."""
    env = PushingEnv("mugs", width=64, height=48)
    pairs = make_goal_pairs(env, GoalPairConfig(seed=0), 24)
    env.close()
    red = np.array([pair.mug_rgba[0] for pair in pairs])
    start_x = np.array([pair.start_position[0] for pair in pairs])
    assert abs(np.corrcoef(red, start_x)[0, 1]) < 0.6
    textures = env.task.mug_textures
    heading = np.array([math.atan2(pair.push_velocity[1], pair.push_velocity[0]) % (2 * math.pi) for pair in pairs])
    octant = (heading // (2 * math.pi / textures)).astype(int)
    assert np.mean(octant == [pair.mug_material for pair in pairs]) < 0.5
    assert len({pair.mug_instance for pair in pairs}) >= 5
    env = PushingEnv("mugs", width=64, height=48)
    again = make_goal_pairs(env, GoalPairConfig(seed=0), 3)
    env.close()
    assert [(p.mug_instance, p.mug_material) for p in again] == [(p.mug_instance, p.mug_material) for p in pairs[:3]]


def test_an_episode_on_mugs_is_scored_at_the_mugs_middle():
    """An episode's row takes the mug's centre from the environment: a real mug, scored against its own pose turned
    30 deg about the middle of its axis, has a position error of 0 and an angle error of 30 deg (at the frame's
    origin, the base, the position error would be the base's swing, 2 sin 15 deg times half the mug's length)."""
    env = PushingEnv("mugs", images=False)
    _, info = env.reset(seed=3)
    env.close()
    centre = info["object_centre_offset"]
    assert centre[2] > 0.03  # half a mug's length, along its axis
    position, quaternion = info["object_position"], info["object_quaternion"]
    turned = quaternion_multiply(yaw_quaternion(math.radians(30)), quaternion)
    middle = position + rotate_by_quaternions(quaternion, centre[None])[0]
    turned_position = middle - rotate_by_quaternions(turned, centre[None])[0]
    run = ClosedLoopRun(np.zeros((1, 5)), np.zeros((0, 2)), info, info, "", 0.0, [])
    row = run.result(0, turned_position, turned)
    assert row.initial_position_error == pytest.approx(0.0, abs=1e-9)
    assert math.degrees(row.initial_angle_error) == pytest.approx(30.0)
    swing = np.linalg.norm(turned_position - position)
    assert swing == pytest.approx(2 * math.sin(math.radians(15)) * np.linalg.norm(centre), rel=1e-6)
    unscored = dict(info)
    del unscored["object_centre_offset"]  # an environment without the entry: scored at the frame's origin
    row = ClosedLoopRun(np.zeros((1, 5)), np.zeros((0, 2)), unscored, unscored, "", 0.0, []).result(
        0, turned_position, turned
    )
    assert row.initial_position_error == pytest.approx(swing)

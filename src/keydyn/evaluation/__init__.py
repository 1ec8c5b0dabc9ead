"""Evaluation: fixed start/goal pairs, pose errors and (later) closed-loop goal reaching and tracking."""

from keydyn.evaluation.goals import GoalPair, GoalPairConfig, make_goal_pairs
from keydyn.evaluation.metrics import angle_between, pose_errors

__all__ = ["GoalPair", "GoalPairConfig", "angle_between", "make_goal_pairs", "pose_errors"]

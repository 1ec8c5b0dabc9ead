"""The robot's side of `keydyn serve`: send observations, get pusher velocities. Imports only numpy, pyzmq and
msgpack (no torch), so that it runs on a light robot computer.

    client = Client("tcp://gpu-box:5555")
    client.info()                               # the run's task, cameras, resolution, latent, control_dt
    client.reset(goal=goal_observation, steps=15)
    while running:
        velocity = client.act(observation)      # (2,) world-xy pusher velocity, m/s
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import zmq

from keydyn.remote.protocol import decode, encode, request


class ServerError(RuntimeError):
    """The server refused a request; the message names the problem and the fix."""


class Plan(NamedTuple):
    """What `Client.plan` returns: the planned (H, 2) pusher velocities (m/s; the first is the one to execute),
    the (H + 1, D) latents the model predicts along them (the first: the observed one), and for keypoint latents
    the (H + 1, P, 3) world keypoints (metres) along them, else None."""

    actions: np.ndarray
    latents: np.ndarray
    keypoints: np.ndarray | None


class Act(NamedTuple):
    """What `Client.act_reply` returns: the (2,) world-xy pusher velocity (m/s) to execute now, the (D,) latent
    the server observed, and the seconds the server spent encoding the observation and planning."""

    action: np.ndarray
    latent: np.ndarray
    encode_time: float
    plan_time: float


class Client:
    """A connection to `keydyn serve` at `address` (e.g. "tcp://127.0.0.1:5555").

    Each call sends one request and waits at most `timeout_s` seconds for its reply; a reply that does not come
    raises TimeoutError, and the socket is made afresh (a ZMQ REQ socket cannot send again before it has a
    reply), so that the next call can be sent. A refused request raises ServerError. An act or plan whose reply
    was lost may still have been planned by the server: the next one is then refused (it sends the steps this
    client received, `step`) until a reset starts the episode again.
    """

    def __init__(self, address: str = "tcp://127.0.0.1:5555", timeout_s: float = 10.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.address, self.timeout_s = address, timeout_s
        self.step = 0
        """Actions of the current episode received from the server (sent with each act and plan)."""
        self._context = zmq.Context()
        self._socket = self._connect()

    def _connect(self) -> zmq.Socket:
        socket = self._context.socket(zmq.REQ)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVTIMEO, max(1, round(1000 * self.timeout_s)))
        socket.setsockopt(zmq.SNDTIMEO, max(1, round(1000 * self.timeout_s)))
        socket.connect(self.address)
        return socket

    def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        try:
            self._socket.send(encode(request(op, **fields)))
            reply = decode(self._socket.recv())
        except zmq.Again:
            self._socket.close()
            self._socket = self._connect()
            raise TimeoutError(
                f"no reply to {op} from a keydyn server at {self.address} within {self.timeout_s:g} s; start "
                f"`keydyn serve --run RUN --address {self.address}` there, or give a longer timeout_s"
            ) from None
        if not reply.get("ok"):
            raise ServerError(f"keydyn serve refused {op}: {reply.get('error', 'no reason given')}")
        return {name: value for name, value in reply.items() if name != "ok"}

    def info(self) -> dict[str, Any]:
        """The served run: its task, the cameras (names) whose images an observation carries, their resolution
        (`width`, `height`, pixels), the latent, `control_dt` (seconds between actions) and the MPC settings."""
        return self._call("info")

    def reset(
        self,
        goal: Mapping[str, Any] | None = None,
        reference: Sequence[Mapping[str, Any]] | None = None,
        steps: int | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """Start an episode toward `goal`, an observation of the goal scene, or along `reference`, the T + 1
        observations of a demonstration to track; the episode's first `act` gives its first observation.

        steps: control steps in the episode (with a goal, the horizon shrinks to the steps left; default none,
            a fixed horizon); with a reference, T unless given. seed: the planner's random seed.
        Returns the target's latents: (D,) of the goal, or (T + 1, D) of the reference.
        """
        references = None if reference is None else list(reference)
        self.step = 0
        return self._call("reset", goal=goal, reference=references, steps=steps, seed=seed)["target"]

    def act(self, observation: Mapping[str, Any], frame_age_s: float | None = None) -> np.ndarray:
        """The (2,) world-xy pusher velocity (m/s) to execute now, planned from `observation`. frame_age_s: seconds
        from the capture of its images to now (the server refuses a frame older than its limit, `info`'s
        max_frame_age_s); none: not checked."""
        return self.act_reply(observation, frame_age_s).action

    def act_reply(self, observation: Mapping[str, Any], frame_age_s: float | None = None) -> Act:
        """`act`, with the latent the server observed and its encoding and planning times."""
        reply = self._call("act", observation=observation, step=self.step, frame_age_s=frame_age_s)
        self.step += 1
        return Act(reply["action"], reply["latent"], reply["encode_time_s"], reply["plan_time_s"])

    def plan(self, observation: Mapping[str, Any], frame_age_s: float | None = None) -> Plan:
        """`act`, returning the whole plan: its first action is the one to execute now."""
        reply = self._call("plan", observation=observation, step=self.step, frame_age_s=frame_age_s)
        self.step += 1
        return Plan(reply["actions"], reply["latents"], reply.get("keypoints"))

    def save(self, name: str) -> str:
        """Write the session (every episode's target, latents, actions and timings) to the JSON file `name` in the
        server's --save-dir; returns the path written there."""
        return self._call("save", name=str(name))["path"]

    def close(self) -> None:
        self._socket.close()
        self._context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

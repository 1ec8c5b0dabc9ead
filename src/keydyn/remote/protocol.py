"""The wire format of `keydyn serve` and its client: one msgpack map per message, over a ZMQ REQ/REP socket.

Imports only numpy and msgpack, so that a robot's computer needs neither torch nor the rest of keydyn.

Request: {"version": VERSION, "op": OP, ...the op's fields (REQUESTS)}. Reply: {"ok": true, ...} or
{"ok": false, "error": "one line naming the problem and the fix"}. A numpy array travels as the map
{"dtype": "<f4", "shape": [H, W], "data": raw bytes}: little-endian (or single-byte) booleans, integers and floats,
C order; anything else is refused. Other values are msgpack's own: numbers, strings, lists, maps, nil.

An observation (the fields `goal`, `reference` items and `observation`) is a map of keydyn's observation entries
(`keydyn.sim.observations`): `pusher_position` (2,) world xy in metres, and per camera NAME `NAME/rgb` (H, W, 3)
uint8, `NAME/depth` (H, W) float32 metres or uint16 millimetres, `NAME/intrinsics` (3, 3) K in pixels and
`NAME/pose` (4, 4) T_world_camera; optionally `info`, a map of ground truth for latents that read it (GT 3D in
simulation: `object_position`, `object_quaternion`). An act or plan may carry `frame_age_s`: seconds from the
capture of its images to the sending of the request, on the robot's clock (no clocks need agree); the server
refuses a frame older than its limit. An act or plan carries `step`, the actions of this episode the robot has
received (0 for its first): the server refuses one that does not match the steps it has planned, so that a
reply lost to a timeout, or a second robot, cannot go on with a history the robot did not live.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

VERSION = 4
"""Protocol version, sent with every request and checked by the server; bumped when a message changes meaning."""

ARRAY_KEYS = frozenset({"dtype", "shape", "data"})
ARRAY_KINDS = "biuf"  # bool, signed and unsigned integers, floats

REQUESTS: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "info": {},
    "reset": {"goal": (dict, False), "reference": (list, False), "steps": (int, False), "seed": (int, False)},
    "act": {"observation": (dict, True), "step": (int, True), "frame_age_s": ((int, float), False)},
    "plan": {"observation": (dict, True), "step": (int, True), "frame_age_s": ((int, float), False)},
    "save": {"name": (str, True)},
}
"""Each op's fields: name -> (msgpack type(s), required). reset takes exactly one of goal and reference."""


class ProtocolError(ValueError):
    """A message that does not follow the protocol (not msgpack, wrong version, unknown op or field, bad array)."""


def pack_array(value: np.ndarray) -> dict[str, Any]:
    """An array as its wire map (converted to little-endian, C order).

    Raises:
        TypeError: not an array of booleans, integers or floats.
    """
    array = np.asarray(value)
    if array.dtype.kind not in ARRAY_KINDS:
        raise TypeError(f"cannot send an array of {array.dtype}; send booleans, integers or floats")
    array = np.asarray(array, dtype=array.dtype.newbyteorder("<"))
    if not array.flags.c_contiguous:  # np.ascontiguousarray would turn a 0-d array into a 1-d one
        array = array.copy(order="C")
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": memoryview(array)}


def unpack_array(value: Mapping[str, Any]) -> np.ndarray:
    """A (writable) array from its wire map.

    Raises:
        ProtocolError: a dtype that is not little-endian booleans, integers or floats, a bad shape, or data of
            another length than the dtype and shape give.
    """
    name, shape, data = value["dtype"], value["shape"], value["data"]
    try:
        dtype = np.dtype(name) if isinstance(name, str) and name[:1] in "<|" else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in ARRAY_KINDS:
        raise ProtocolError(
            f"array dtype {name!r} is not a little-endian bool, integer or float ('<f4', '|u1', ...); send "
            "array.astype(array.dtype.newbyteorder('<')) (keydyn.remote.protocol.pack_array does)"
        )
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ProtocolError(f"array shape {shape!r} is not a list of sizes; send list(array.shape)")
    expected = math.prod(shape) * dtype.itemsize
    if not isinstance(data, bytes) or len(data) != expected:
        length = f"{len(data)} bytes" if isinstance(data, bytes) else type(data).__name__
        raise ProtocolError(
            f"array data is {length}, its dtype {name} and shape {shape} need {expected} bytes; send the array's "
            "raw C-order bytes"
        )
    return np.frombuffer(data, dtype).reshape(shape).copy()


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return pack_array(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot send a {type(value).__name__}; send numpy arrays, numbers, strings, lists and maps")


def _object_hook(value: dict[str, Any]) -> Any:
    return unpack_array(value) if value.keys() == ARRAY_KEYS else value


def encode(message: Mapping[str, Any]) -> bytes:
    """A message (maps, lists, numbers, strings, numpy arrays and scalars) as msgpack bytes."""
    return msgpack.packb(message, default=_default)


def decode(data: bytes) -> dict[str, Any]:
    """A message from msgpack bytes, its arrays as numpy arrays.

    Raises:
        ProtocolError: not one msgpack map, or a bad array in it.
    """
    try:
        message = msgpack.unpackb(data, object_hook=_object_hook)
    except ProtocolError:
        raise
    except (ValueError, msgpack.UnpackException) as error:
        raise ProtocolError(
            f"the message is not msgpack ({error}); send keydyn.remote.protocol.encode(message)"
        ) from error
    if not isinstance(message, dict):
        raise ProtocolError(f"the message is a msgpack {type(message).__name__}, not a map; send a map")
    return message


def request(op: str, **fields: Any) -> dict[str, Any]:
    """A request of `op` with `fields` (those given as None left out), at this protocol's version."""
    return {"version": VERSION, "op": op, **{name: value for name, value in fields.items() if value is not None}}


def check_request(message: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(op, fields) of a request, checked against VERSION and REQUESTS.

    Raises:
        ProtocolError: another version, an unknown op, a missing or unknown field, or a field of the wrong type.
    """
    version = message.get("version")
    if version != VERSION:
        raise ProtocolError(
            f"the request is of protocol version {version!r}, this server speaks version {VERSION}; use the "
            "keydyn.remote.client of the keydyn that runs the server"
        )
    op = message.get("op")
    if op not in REQUESTS:
        raise ProtocolError(f"unknown op {op!r}; send one of {', '.join(REQUESTS)}")
    fields = {name: value for name, value in message.items() if name not in ("version", "op")}
    schema = REQUESTS[op]
    unknown = sorted(set(fields) - set(schema))
    missing = [name for name, (_, required) in schema.items() if required and name not in fields]
    if unknown or missing:
        problem = f"unknown fields {', '.join(unknown)}" if unknown else f"no {', '.join(missing)}"
        expected = ", ".join(f"{name}{'' if required else ' (optional)'}" for name, (_, required) in schema.items())
        raise ProtocolError(f"the {op} request has {problem}; its fields: {expected or 'none'}")
    for name, value in fields.items():
        kind = schema[name][0]
        if not isinstance(value, kind) or isinstance(value, bool):
            kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise ProtocolError(f"the {op} request's {name} is a {type(value).__name__}; send a {kinds}")
    return op, fields


def reply_error(message: str) -> dict[str, Any]:
    """The reply to a refused request: `message` on one line."""
    return {"ok": False, "error": " ".join(message.split())}

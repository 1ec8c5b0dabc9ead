"""`keydyn serve`: a ZMQ REP socket answering a robot's requests (`keydyn.remote.protocol`) with a
`ControlSession`, one at a time, until Ctrl-C or SIGTERM.

Every request gets a reply: a request that cannot be read or is refused is answered {"ok": false, "error": ...},
and the server goes on serving; an unexpected error is answered likewise, its traceback printed on standard error.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from typing import Any

import torch
import zmq

from keydyn.remote.protocol import ProtocolError, check_request, decode, encode, reply_error
from keydyn.remote.session import ControlSession, ServeConfig

POLL_MS = 100
"""How often the serving loop looks at its stop flag while no request comes, milliseconds."""


class Server:
    """A session served at `address` (a ZMQ endpoint; tcp://HOST:* binds any free port, `address` then names the
    one bound). Serve from one thread at a time; `close` when done."""

    def __init__(self, session: ControlSession, address: str) -> None:
        self.session = session
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            self._socket.bind(address)
        except zmq.ZMQError as error:
            self.close()
            raise OSError(
                f"cannot listen at {address} ({error}); give another --address (tcp://HOST:PORT, ipc:///path)"
            ) from error
        self.address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def reply(self, frames: list[bytes]) -> dict[str, Any]:
        """The reply to a request's message frames (one msgpack map)."""
        try:
            if len(frames) != 1:
                raise ProtocolError(f"the request has {len(frames)} message parts; send one msgpack map")
            op, fields = check_request(decode(frames[0]))
            return {"ok": True, **getattr(self.session, op)(**fields)}
        except ValueError as error:  # the protocol's, the session's and the observation's refusals
            return reply_error(str(error))
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            return reply_error(
                f"keydyn serve failed on this request ({type(error).__name__}: {error}); the server goes on, its "
                "log has the traceback: report it"
            )

    def serve(self, stop: threading.Event) -> None:
        """Answer requests until `stop` is set (within POLL_MS, or after the request being answered)."""
        while not stop.is_set():
            if not self._socket.poll(POLL_MS):
                continue
            reply = self.reply(self._socket.recv_multipart())
            try:
                data = encode(reply)
            except (TypeError, ValueError) as error:  # a reply that cannot travel: a bug, answered all the same
                data = encode(reply_error(f"keydyn serve could not encode its reply ({error}); report it"))
            self._socket.send(data)

    def close(self) -> None:
        self._socket.close()
        self._context.term()


def serve(config: ServeConfig) -> None:
    """Load the run, then serve it at config.address until Ctrl-C or SIGTERM (each stops it cleanly)."""
    torch.set_num_threads(config.threads)
    server = Server(ControlSession(config), config.address)
    stop = threading.Event()
    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in (signal.SIGINT, signal.SIGTERM)}
    info = server.session.info()
    print(
        f"keydyn serve: {info['latent']} run {config.run} ({info['task']}, cameras "
        f"{', '.join(info['cameras']) or 'none'} at {info['width']}x{info['height']}) at {server.address}; "
        "Ctrl-C stops",
        flush=True,
    )
    try:
        server.serve(stop)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        server.close()
    print("keydyn serve: stopped", flush=True)

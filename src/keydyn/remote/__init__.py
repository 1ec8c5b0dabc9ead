"""Control from another computer: `keydyn serve` (`server`, `session`) answers a robot's requests, which the robot
sends with `client.Client`; `protocol` is the wire format. The client and protocol import only numpy, pyzmq and
msgpack (no torch); this package imports none of its modules, so that importing the client stays light."""

"""Adapters that make environments keydyn did not write work as `PushingEnvironment`s (see docs/extending.md)."""

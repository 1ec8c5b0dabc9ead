"""Episode datasets: the zarr store, parallel collection and dataset tools."""

from keydyn.data.store import EpisodeStore, StoreError

__all__ = ["EpisodeStore", "StoreError"]

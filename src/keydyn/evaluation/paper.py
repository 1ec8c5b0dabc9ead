"""The paper's published goal-reaching results, shown beside keydyn's own (Manuelli et al. 2020).

Table 1: final position error (cm) and angle error (deg), mean over the same 200 start/goal pairs per task.
Table 2: the baselines (Transporter 3D / 2D, autoencoder) beside SDS, in the same units.
"""

from __future__ import annotations

TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    "top_down": {
        "gt3d": (1.14, 4.01),
        "sds": (1.19, 3.88),
        "wds": (1.16, 4.43),
        "ds": (1.12, 4.07),
        "wsds": (1.19, 4.00),
        "trajectory": (11.32, 32.05),
    },
    "angled": {
        "gt3d": (1.14, 4.01),
        "sds": (1.10, 3.97),
        "wds": (1.30, 5.12),
        "ds": (1.45, 5.50),
        "wsds": (1.18, 4.86),
        "trajectory": (11.32, 32.05),
    },
    "occlusions": {
        "gt3d": (1.29, 5.45),
        "sds": (1.46, 6.77),
        "wds": (1.49, 8.64),
        "ds": (3.66, 12.27),
        "wsds": (1.28, 5.59),
        "trajectory": (10.36, 31.81),
    },
    "mugs": {
        "sds": (1.20, 15.03),
        "wds": (1.00, 13.29),
        "ds": (1.19, 11.73),
        "wsds": (1.39, 18.18),
        "trajectory": (11.28, 56.25),
    },
}
"""TABLE1[task][method] = (position cm, angle deg); "trajectory" is the Avg. trajectory row."""

_TABLE2_ROWS: dict[str, dict[str, tuple[float, float]]] = {
    "top_down": {"transporter3d": (2.01, 15.95), "transporter2d": (2.08, 13.59), "autoencoder": (2.18, 14.79)},
    "angled": {"transporter3d": (4.36, 25.14), "transporter2d": (3.60, 23.60), "autoencoder": (2.85, 13.79)},
    "occlusions": {"transporter3d": (3.72, 20.65), "transporter2d": (2.74, 18.86), "autoencoder": (3.08, 14.20)},
    "mugs": {"transporter3d": (2.81, 61.22), "transporter2d": (2.33, 60.18), "autoencoder": (9.05, 56.84)},
}
TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    task: {
        **rows,
        **{name: TABLE1[task][name] for name in ("sds", "gt3d", "trajectory") if name in TABLE1[task]},
    }
    for task, rows in _TABLE2_ROWS.items()
}
"""TABLE2[task][method] = (position cm, angle deg); its SDS figures are Table 1's (the same in both tables), and
GT 3D and the Avg. trajectory row, which Table 2 does not print, are taken from Table 1 for reference."""

TABLES = {"table1": TABLE1, "table2": TABLE2}

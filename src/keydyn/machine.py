"""Describe the machine a run or benchmark ran on (saved beside figures so they can be compared)."""

from __future__ import annotations

import os
import platform


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "mujoco_gl": os.environ.get("MUJOCO_GL", "egl"),
    }
    try:
        import mujoco

        info["mujoco"] = mujoco.__version__
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info

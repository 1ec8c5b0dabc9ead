"""keydyn: self-supervised keypoint dynamics and model-predictive control for pushing from RGB-D images."""

import os

# MuJoCo picks its OpenGL backend when it is first imported; default to headless EGL unless the user chose.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

__version__ = "0.1.0"

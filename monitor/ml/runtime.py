"""TensorFlow and Keras, imported on first use: device detection, mixed precision, seeding."""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache


@lru_cache(maxsize=1)
def keras():
    """The Keras 3 module on the TensorFlow backend (TensorFlow's C++ log noise silenced)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras as _keras

    return _keras


@lru_cache(maxsize=1)
def tf():
    """The TensorFlow module (imported on first use)."""
    keras()
    import tensorflow as _tf

    return _tf


@lru_cache(maxsize=1)
def has_gpu() -> bool:
    """Whether TensorFlow sees a GPU (it then places the work there by itself)."""
    return bool(tf().config.list_physical_devices("GPU"))


def precision_policy(precision: str = "auto") -> str:
    """Keras dtype policy for ``precision`` in auto|float32|mixed: auto is mixed on a GPU, float32 on CPU."""
    if precision not in ("auto", "float32", "mixed"):
        raise ValueError(f"precision must be auto, float32 or mixed, not {precision!r}")
    if precision == "auto":
        return "mixed_float16" if has_gpu() else "float32"
    return "mixed_float16" if precision == "mixed" else "float32"


@lru_cache(maxsize=1)
def cpu_has_amx_bf16() -> bool:
    """Whether the CPU has AMX bfloat16 tile units (Intel Sapphire Rapids and later), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


INFERENCE_PRECISIONS = ("auto", "float32", "mixed", "bfloat16")


def inference_policy(precision: str = "auto") -> str:
    """Keras dtype policy of inference for ``precision`` in auto|float32|mixed|bfloat16.

    auto: mixed float16 on a GPU, mixed bfloat16 on a CPU with AMX bfloat16 units (where oneDNN runs
    bfloat16 convolutions several times faster than float32), float32 on any other CPU.
    """
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"inference precision must be one of {', '.join(INFERENCE_PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        if has_gpu():
            return "mixed_float16"
        return "mixed_bfloat16" if cpu_has_amx_bf16() else "float32"
    return {"float32": "float32", "mixed": "mixed_float16", "bfloat16": "mixed_bfloat16"}[precision]


@contextmanager
def dtype_policy(policy: str):
    """Build layers under a Keras dtype policy, restoring the previous one afterwards."""
    k = keras()
    before = k.config.dtype_policy()
    k.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        k.config.set_dtype_policy(before)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow so that a training run repeats."""
    keras().utils.set_random_seed(seed)

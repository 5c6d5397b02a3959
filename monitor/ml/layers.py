"""Keras layers without trained weights that change models are built from: the difference of the two
dates stacked in the input, its per-pixel L2 norm (the change-vector magnitude), a fixed Gaussian blur,
a local standard deviation (texture) and the norm of each date's bands.

The classes are made (and registered for loading saved models) on first use of ``custom_objects``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from monitor.ml.runtime import dtype_policy, keras


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalized 1-D Gaussian (length 2 * ceil(3 sigma) + 1) as float32; the 2-D blur is its outer
    product with itself, applied as two 1-D passes."""
    r = max(1, int(np.ceil(3 * sigma)))
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


@lru_cache(maxsize=1)
def custom_objects() -> dict:
    """The layer classes by name, registered with Keras under the package ``monitor``."""
    k = keras()
    ops = k.ops
    register = k.saving.register_keras_serializable(package="monitor")

    @register
    class DateDifference(k.layers.Layer):  # type: ignore[name-defined]
        """(..., 2n) before then after -> (..., n) after minus before."""

        def call(self, x):
            n = x.shape[-1] // 2
            return x[..., n:] - x[..., :n]

        def compute_output_shape(self, shape):
            return (*shape[:-1], shape[-1] // 2)

    @register
    class ChannelNorm(k.layers.Layer):  # type: ignore[name-defined]
        """(..., n) -> (..., 1): the L2 norm over channels."""

        def call(self, x):
            return ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + 1e-12)

        def compute_output_shape(self, shape):
            return (*shape[:-1], 1)

    @register
    class GaussianBlur(k.layers.Layer):  # type: ignore[name-defined]
        """Each channel smoothed by a fixed Gaussian of ``sigma`` pixels, zero padded: a depthwise convolution
        along the rows, then one along the columns (the Gaussian is separable, so this equals the 2-D
        convolution with 2 x 25 instead of 25 x 25 multiplications a pixel at 4 pixels).

        It always runs in float32 (``float32_only``): oneDNN has no fast bfloat16 kernel for large depthwise
        convolutions, where a 25x25 blur ran over a hundred times slower than in float32.
        """

        float32_only = True

        def __init__(self, sigma: float = 1.0, **kw):
            super().__init__(**kw)
            self.sigma = float(sigma)

        def blur(self, x):
            g = np.repeat(gaussian_kernel(self.sigma)[:, None, None], x.shape[-1], axis=1)  # (side, channels, 1)
            for kernel in (g[:, None], g[None, :]):  # down the rows, then along the columns
                x = ops.depthwise_conv(x, ops.cast(kernel, x.dtype), padding="same")
            return x

        def call(self, x):
            return self.blur(x)

        def compute_output_shape(self, shape):
            return shape

        def get_config(self):
            return {**super().get_config(), "sigma": self.sigma}

    @register
    class LocalStd(GaussianBlur):  # type: ignore[name-defined]
        """Each channel's local standard deviation in a Gaussian window of ``sigma`` pixels (texture):
        sqrt(max(0, blur(x^2) - blur(x)^2)). Float32 only, like ``GaussianBlur``."""

        def call(self, x):
            return ops.sqrt(ops.maximum(self.blur(ops.square(x)) - ops.square(self.blur(x)), 0.0) + 1e-6)

    @register
    class DateSplitNorm(k.layers.Layer):  # type: ignore[name-defined]
        """(..., 2n) before then after -> (..., 2): the L2 norm over the channels of each date."""

        def call(self, x):
            n = x.shape[-1] // 2
            return ops.concatenate([
                ops.sqrt(ops.sum(ops.square(x[..., :n]), axis=-1, keepdims=True) + 1e-12),
                ops.sqrt(ops.sum(ops.square(x[..., n:]), axis=-1, keepdims=True) + 1e-12)], axis=-1)

        def compute_output_shape(self, shape):
            return (*shape[:-1], 2)

    @register
    class OddsToProbability(k.layers.Layer):  # type: ignore[name-defined]
        """x >= 0 -> x / (1 + x) in [0, 1): a magnitude as a probability whose odds it is."""

        def call(self, x):
            return x / (1 + x)

    return {c.__name__: c for c in (DateDifference, ChannelNorm, GaussianBlur, LocalStd, DateSplitNorm,
                                    OddsToProbability)}


def build_cva(bands: int, sigma: float):
    """The change-vector-analysis network: (None, None, 2 * bands) standardized before+after -> (None, None, 1)
    m / (1 + m) of the smoothed magnitude m of the difference (a probability whose odds are m, as the
    pipeline takes maps in 0..1; the threshold rule works on the odds, m itself)."""
    k = keras()
    L, c = k.layers, custom_objects()
    inputs = k.Input((None, None, 2 * bands), name="bands")
    m = c["ChannelNorm"](name="magnitude")(c["DateDifference"](name="difference")(inputs))
    m = c["GaussianBlur"](sigma, name="smooth")(m)
    m = c["OddsToProbability"](name="odds_to_probability")(m)
    out = L.Activation("linear", dtype="float32", name="probability")(m)
    return k.Model(inputs, out, name="cva")


def build_feature_net(bands: int, *, sigmas: tuple[float, ...] = (1.0, 2.0, 4.0), filters: int = 16,
                      dropout: float = 0.1, policy: str = "float32", texture: tuple[float, ...] = (),
                      texture_skip: bool = True, dates: bool = True):
    """The default change network: few parameters on top of fixed change features.

    From per-image standardized before+after bands it computes the difference, the change-vector
    magnitude smoothed at each of ``sigmas`` pixels, and concatenates them with both dates (unless not
    ``dates``); one 3x3 convolution of ``filters`` and two 1x1 convolutions make a change probability per
    pixel. For each of ``texture`` (Gaussian sigmas in pixels) it adds texture features: the norm of the
    local standard deviations of the difference, that of each date's bands, and the size of their change;
    with ``texture_skip`` they also reach the last layer directly, beside the smoothed magnitudes.
    The defaults (no texture) build the network of the first ``builtin:oscd-change``; the recipe
    (``changenet.train_change_features``) adds texture at 1.5 pixels.
    """
    k = keras()
    L, c = k.layers, custom_objects()
    with dtype_policy(policy):
        inputs = k.Input((None, None, 2 * bands), name="bands")
        diff = c["DateDifference"](name="difference")(inputs)
        mag = c["ChannelNorm"](name="magnitude")(diff)
        smooth = [c["GaussianBlur"](s, name=f"magnitude_s{i}")(mag) for i, s in enumerate(sigmas)]
        extra = []
        for i, s in enumerate(texture):
            # texture of the change (local spread of the difference) and of each date, and its change
            dtex = c["ChannelNorm"](name=f"difference_texture_{i}")(c["LocalStd"](s, name=f"difference_std_{i}")(diff))
            tex = c["DateSplitNorm"](name=f"date_texture_{i}")(c["LocalStd"](s, name=f"date_std_{i}")(inputs))
            tdiff = c["ChannelNorm"](name=f"texture_change_{i}")(c["DateDifference"](name=f"texture_diff_{i}")(tex))
            extra += [dtex, tex, tdiff]
        x = L.Concatenate(name="features")([*([inputs] if dates else []), diff, mag, *smooth, *extra])
        x = L.Conv2D(filters, 3, padding="same", activation="relu", name="conv3")(x)
        if dropout:
            x = L.SpatialDropout2D(dropout)(x)
        x = L.Conv2D(filters, 1, activation="relu", name="conv1")(x)
        x = L.Concatenate(name="with_magnitude")([x, *smooth, *(extra if texture_skip else [])])
        logits = L.Conv2D(1, 1, name="logits")(x)
        out = L.Activation("sigmoid", dtype="float32", name="probability")(logits)
    return k.Model(inputs, out, name="change_features")


def mean_of(nets: list):
    """One network whose output is the mean of ``nets``' outputs (networks of one input shape): an
    ensemble that saves, loads and predicts like any model."""
    k = keras()
    inputs = k.Input(shape=nets[0].inputs[0].shape[1:], name="bands")
    members = []
    for i, net in enumerate(nets):
        member = k.Model.from_config({**net.get_config(), "name": f"member_{i}"})  # uncompiled, renamed
        member.set_weights(net.get_weights())
        members.append(member)
    out = k.layers.Average(dtype="float32", name="mean")([m(inputs) for m in members])
    return k.Model(inputs, out, name="ensemble")

"""The U-Net: the built-up segmenter, and, over two dates stacked band-wise, the early-fusion change model."""

from __future__ import annotations

from monitor.ml.runtime import dtype_policy, keras


def build_unet(in_channels: int, *, depth: int = 4, base_filters: int = 16, dropout: float = 0.1,
               upsample: int = 1, policy: str = "float32", name: str = "unet"):
    """A fully convolutional U-Net: ``depth`` poolings, ``base_filters`` doubling per level, a sigmoid map out.

    The input is (None, None, in_channels): any window whose sides are multiples of 2**depth.
    With ``upsample`` > 1 the network first enlarges its input that many times (each pixel repeated) and averages
    its probabilities back to the input's grid: objects a few pixels wide get more pixels to be found
    in, for ``upsample``² times the computation. The output is always on the input's grid, in float32
    even under a mixed precision ``policy``.
    """
    if depth < 1 or base_filters < 1 or in_channels < 1 or upsample < 1:
        raise ValueError("depth, base_filters, upsample and in_channels must be positive")
    k = keras()
    L = k.layers

    def block(x, filters):
        for _ in range(2):
            x = L.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal")(x)
            x = L.BatchNormalization()(x)
            x = L.ReLU()(x)
        return x

    with dtype_policy(policy):
        inputs = k.Input((None, None, in_channels), name="bands")
        x, skips = inputs, []
        if upsample > 1:
            x = L.UpSampling2D(upsample, name="upsample")(x)
        for d in range(depth):
            x = block(x, base_filters * 2 ** d)
            skips.append(x)
            x = L.MaxPooling2D()(x)
        x = block(x, base_filters * 2 ** depth)
        if dropout:
            x = L.SpatialDropout2D(dropout)(x)
        for d in reversed(range(depth)):
            x = L.Conv2DTranspose(base_filters * 2 ** d, 2, strides=2, padding="same")(x)
            x = L.Concatenate()([x, skips[d]])
            x = block(x, base_filters * 2 ** d)
        logits = L.Conv2D(1, 1, name="logits")(x)
        out = L.Activation("sigmoid", dtype="float32", name="probability")(logits)
        if upsample > 1:
            out = L.AveragePooling2D(upsample, dtype="float32", name="to_input_grid")(out)
    return k.Model(inputs, out, name=name)

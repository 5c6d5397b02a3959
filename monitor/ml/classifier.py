"""The settlement classifier: a CNN backbone without top, Flatten -> Dense -> Dropout -> sigmoid."""

from __future__ import annotations

from pathlib import Path

from monitor.errors import BadInput
from monitor.ml.runtime import dtype_policy, keras

BACKBONES = ("resnet50", "mobilenetv2", "small")

# Channel means of the ImageNet weights' Caffe preprocessing, in B, G, R order, no scaling.
IMAGENET_BGR_MEAN = [103.939, 116.779, 123.68]


def build_classifier(in_channels: int = 3, tile: int = 256, *, backbone: str = "resnet50",
                     weights: str | Path | None = None, freeze: int = 60, dense: int = 1024,
                     dropout: float = 0.5, policy: str = "float32"):
    """Tile -> settlement probability.

    ``weights`` is a local Keras weights file of the backbone without top (ImageNet, say); without it
    the backbone starts from random weights. The first ``freeze`` layers of the backbone are frozen.
    ``small`` is a four-block CNN for machines without a GPU.
    """
    if backbone not in BACKBONES:
        raise BadInput(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}", field="backbone")
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise BadInput("weights file does not exist", file=weights)
        if backbone == "small":
            raise BadInput("the small backbone has no pretrained weights", field="weights")
        if in_channels != 3:
            raise BadInput(f"pretrained weights need 3 input bands, not {in_channels}", field="bands")
    k = keras()
    L = k.layers
    with dtype_policy(policy):
        inputs = k.Input((tile, tile, in_channels), name="bands")
        if backbone == "small":
            x = inputs
            for f in (16, 32, 64, 128):
                x = L.Conv2D(f, 3, padding="same", use_bias=False)(x)
                x = L.BatchNormalization()(x)
                x = L.ReLU()(x)
                x = L.MaxPooling2D()(x)
            base_layers = []
        else:
            app = k.applications.ResNet50 if backbone == "resnet50" else k.applications.MobileNetV2
            base = app(include_top=False, weights=str(weights) if weights else None, input_tensor=inputs)
            base_layers = base.layers
            x = base.output
        for layer in base_layers[:freeze]:
            layer.trainable = False
        x = L.Flatten()(x)
        x = L.Dense(dense, activation="relu")(x)
        x = L.Dropout(dropout)(x)
        out = L.Dense(1, activation="sigmoid", dtype="float32", name="probability")(x)
    return k.Model(inputs, out, name=f"classifier_{backbone}")

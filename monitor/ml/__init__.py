"""Models: datasets, the U-Net segmenter, the settlement classifier, the change model, training,
evaluation and tiled inference. The only package that imports TensorFlow, and only lazily (inside
functions), so that importing it costs nothing until a model is built, trained or run."""

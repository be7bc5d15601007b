"""The dataset on disk, as the records job writes it and the trainer, serving and TFDS read it: the record
features (schema), their TFRecord framing (tfrecord), the image transform (transform), manifest.json and _SUCCESS
(manifest), and the TFDS metadata (tfds_metadata). It imports neither Beam nor TensorFlow at import time, so the
records job's workers and the trainer load the same code."""

"""Model, precision and feature-cache behaviour, in process on the small records."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import data, feature_cache, model as model_lib
from trainer.config import TrainConfig
from trainer.steps import make_train_step
from trainer.train import Trainer


@pytest.fixture
def policy():
    yield lambda name: keras.mixed_precision.set_global_policy(name)
    keras.mixed_precision.set_global_policy("float32")


def _trainer(records_dir, tmp_path, **kw):
    config = TrainConfig(
        data_dir=records_dir,
        model_dir=str(tmp_path / "m"),
        weights="none",
        batch_size=8,
        head_units=(16,),
        epochs=1,
        **kw,
    )
    return Trainer(config)


@pytest.mark.parametrize(
    "precision,compute", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16"), ("float32", "float32")]
)
def test_precision_keeps_float32_variables_and_output(records_dir, tmp_path, policy, precision, compute):
    trainer = _trainer(records_dir, tmp_path, precision=precision)
    trainer.build()
    net = trainer.model
    assert all(v.dtype == "float32" for v in net.weights)
    assert model_lib.backbone(net).layers[1].compute_dtype == compute
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype("uint8")
    assert net(images).dtype == tf.float32
    optimizer = trainer.optimizers["optimizer"]
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")
    # one real training step in this precision
    dataset_fn = data.streaming_dataset_fn(trainer.config, trainer.info, "train", training=True)
    step = make_train_step(trainer.strategy, net, optimizer, 8, trainer.loss_scaling)
    before = [w.numpy().copy() for w in net.trainable_weights]
    loss, _, _ = step(iter(trainer.strategy.distribute_datasets_from_function(dataset_fn)))
    assert np.isfinite(float(loss))
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, net.trainable_weights))


def test_feature_cache_matches_streaming(records_dir, tmp_path, policy):
    policy("mixed_bfloat16")
    info = data.load(records_dir)
    net = model_lib.build_model(32, "none", (16,), 0.0, "flatten", seed=1)
    path = str(tmp_path / "cache" / "test")
    strategy = tf.distribute.get_strategy()
    feature_cache.extract(strategy, net, info, "test", path, batch_size=8)
    cached = feature_cache.load(os.path.join(path, "worker-0-of-1"))
    features = np.stack([f.numpy() for f, _ in cached])
    test_fn = data.records_dataset_fn(info.records("test"), data.InputSpec(8, training=False))
    images = np.concatenate([x.numpy() for x, _ in test_fn()])
    streamed = model_lib.feature_model(net).predict(images, verbose=0)
    assert features.shape == streamed.shape == (20, 512)
    np.testing.assert_array_equal(features.astype(np.float32), streamed.astype(np.float32))
    head_probs = model_lib.head_model(net)(tf.constant(features), training=False).numpy()
    np.testing.assert_allclose(head_probs, net.predict(images, verbose=0), atol=1e-6)
    # the cache reuses the saved features: none of their files is written again, and they load the same (only the
    # entry's missing info.json is written: `extract` alone does not describe the entry)
    files = sorted(p for p in tmp_path.joinpath("cache").rglob("*") if p.is_file())
    stamps = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in files}
    cache = feature_cache.FeatureCache(strategy, net, info, str(tmp_path), {}, batch_size=8)
    cache.path = str(tmp_path / "cache")
    again = feature_cache.load(os.path.join(cache.split_path("test"), "worker-0-of-1"))
    assert sorted(p for p in tmp_path.joinpath("cache").rglob("*") if p.is_file() and p.name != "info.json") == files
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in files} == stamps
    np.testing.assert_array_equal(np.stack([f.numpy() for f, _ in again]), features)


def test_fine_tune_unfreezes_from_layer():
    net = model_lib.build_model(32, "none", (8,), 0.0, "flatten")
    frozen = len(net.trainable_weights)
    assert model_lib.unfreeze_from(net, "block5_conv1") == 3
    assert len(net.trainable_weights) == frozen + 6
    with pytest.raises(Exception, match="not a VGG16 layer"):
        model_lib.unfreeze_from(net, "block9_conv1")


def test_weights_from_a_local_file(tmp_path):
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = str(tmp_path / "vgg16_notop.weights.h5")
    source.save_weights(path)
    net = model_lib.build_model(32, path, (8,), 0.0, "flatten")
    for a, b in zip(source.weights, model_lib.backbone(net).weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not model_lib.backbone(net).trainable


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(records_dir, tmp_path, monkeypatch, policy):
    import trainer.train as train_lib

    # Fault injection (a stand-in for a real overflow): the compiled step is wrapped to report NaN from step 4 on.
    real, calls = train_lib.make_train_step, {"n": 0}

    def poisoned(*args, **kwargs):
        step = real(*args, **kwargs)

        def run(iterator, stop=False, num_steps=1):
            loss, correct, votes = step(iterator, stop, num_steps)
            calls["n"] += 1
            return (tf.constant(float("nan")) if calls["n"] > 3 else loss), correct, votes

        return run

    monkeypatch.setattr(train_lib, "make_train_step", poisoned)
    trainer = _trainer(records_dir, tmp_path, steps_per_epoch=3, feature_cache="off", steps_per_loop="1")
    trainer.config.epochs = 3
    with pytest.raises(train_lib.NonFiniteLoss, match="loss became nan at epoch 2, step 1"):
        trainer.train()
    assert trainer.checkpoints.latest.endswith("ckpt-1")
    assert int(trainer.state.epoch.numpy()) == 1


def test_remote_model_dir(records_dir, policy):
    """A gs://-style model_dir (TensorFlow's ram:// filesystem here) gets every output."""
    from celeba_common import fileio

    model_dir = "ram://trainer_test/run"
    config = TrainConfig(
        data_dir=records_dir,
        model_dir=model_dir,
        weights="none",
        batch_size=8,
        head_units=(8,),
        epochs=2,
        steps_per_epoch=2,
    )
    trainer = Trainer(config)
    trainer.train()
    trainer.evaluate_and_export()
    for name in (
        "history.csv",
        "learning_curves.png",
        "metrics.json",
        "confusion_matrix.png",
        "model.keras",
        "export/saved_model.pb",
        "checkpoints/checkpoint",
    ):
        assert fileio.exists(fileio.join(model_dir, name)), name
    assert not fileio.exists(fileio.join(model_dir, "feature_cache"))
    assert [
        r["epoch"]
        for r in __import__("trainer.metrics", fromlist=["x"]).read_history(fileio.join(model_dir, "history.csv"))
    ] == ["1", "2"]


def _history_after(records_dir, model_dir, **kw):
    config = TrainConfig(
        data_dir=records_dir,
        model_dir=str(model_dir),
        weights="none",
        batch_size=8,
        head_units=(16,),
        epochs=2,
        precision="float32",
        **kw,
    )
    trainer = Trainer(config)
    trainer.train()
    from trainer.metrics import read_history

    return trainer, [
        {k: float(r[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
        for r in read_history(os.path.join(str(model_dir), "history.csv"))
    ]


@pytest.mark.parametrize("feature_cache_mode", ["on", "off"])
def test_many_steps_per_call_give_the_results_of_one_step_per_call(records_dir, tmp_path, feature_cache_mode):
    _, one = _history_after(records_dir, tmp_path / "one", steps_per_loop="1", feature_cache=feature_cache_mode)
    trainer, many = _history_after(
        records_dir, tmp_path / "many", steps_per_loop="auto", feature_cache=feature_cache_mode
    )
    assert trainer.loop_plan.steps > 1  # auto settled on several steps per call
    for a, b in zip(one, many):
        for key in a:
            assert abs(a[key] - b[key]) <= 1e-4, (key, one, many)


def test_a_stopped_epoch_on_resident_features_resumes_where_it_stopped(records_dir, tmp_path):
    """A stop asked before the first call (as SIGTERM does) saves after step 1 of epoch 1; the resumed run trains
    the rest of that epoch's order and ends each epoch with the weights of a run never stopped."""
    import trainer.train as train_lib

    settings = dict(feature_cache="on", steps_per_loop="1", dropout=0.0)
    _, whole = _history_after(records_dir, tmp_path / "whole", **settings)
    first = Trainer(
        TrainConfig(
            data_dir=records_dir,
            model_dir=str(tmp_path / "cut"),
            weights="none",
            batch_size=8,
            head_units=(16,),
            epochs=2,
            precision="float32",
            **settings,
        )
    )
    first.sigterm.requested = True
    with pytest.raises(train_lib.Preempted, match="epoch 1, step 1;"):
        first.train()
    resumed, cut = _history_after(records_dir, tmp_path / "cut", **settings)
    assert resumed.features.resident() is not None  # the path under test: features held in memory
    assert [r["val_loss"] for r in cut] == pytest.approx([r["val_loss"] for r in whole], abs=1e-6)
    assert cut[1]["loss"] == pytest.approx(whole[1]["loss"], abs=1e-6)


def test_xla_gives_the_loss_of_no_xla(records_dir, tmp_path):
    # dropout 0: XLA draws other random numbers than the plain kernels, so dropout masks would differ
    _, plain = _history_after(records_dir, tmp_path / "plain", jit_compile="off", dropout=0.0)
    trainer, xla = _history_after(records_dir, tmp_path / "xla", jit_compile="on", dropout=0.0)
    assert trainer.jit_compile
    for a, b in zip(plain, xla):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 and abs(a["val_loss"] - b["val_loss"]) <= 1e-4, (plain, xla)


def test_profile_steps_leave_a_trace_for_tensorboard(records_dir, tmp_path):
    _history_after(records_dir, tmp_path / "p", profile_steps="3,6", feature_cache="off", steps_per_epoch=5)
    traces = list((tmp_path / "p" / "logs" / "plugins" / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0

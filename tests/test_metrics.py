import itertools

import numpy as np

from dataset_format.schema import ATTRIBUTE_NAMES
from trainer.metrics import classification_metrics, roc_auc


def _brute_auc(labels, scores):
    pos = [s for s, label in zip(scores, labels) if label]
    neg = [s for s, label in zip(scores, labels) if not label]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + labels * 0.3, 2)  # rounding makes ties
    assert abs(roc_auc(labels, scores) - _brute_auc(labels, scores)) < 1e-12
    assert np.isnan(roc_auc(np.ones(5), np.arange(5)))


def test_classification_metrics():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    attributes = np.zeros((5, len(ATTRIBUTE_NAMES)), int)
    eyeglasses = ATTRIBUTE_NAMES.index("Eyeglasses")
    attributes[[0, 3], eyeglasses] = 1
    m = classification_metrics(probs, labels, attributes)
    assert m["accuracy"] == 0.6
    assert m["confusion_matrix"]["matrix"] == [[1, 1], [1, 2]]
    assert m["per_class"]["male"] == {
        "precision": round(2 / 3, 5),
        "recall": round(2 / 3, 5),
        "f1": round(2 / 3, 5),
        "support": 3,
    }
    assert m["attribute_slices"]["Eyeglasses"]["with"] == {"count": 2, "accuracy": 0.5}
    assert m["attribute_slices"]["Eyeglasses"]["without"] == {"count": 3, "accuracy": round(2 / 3, 5)}
    expected_loss = -np.mean(np.log([0.9, 0.3, 0.8, 0.4, 0.9]))
    assert abs(m["loss"] - expected_loss) < 1e-4


def test_learning_curves_are_drawn_after_the_first_and_last_epoch_and_then_at_most_every_plot_seconds(tmp_path):
    from trainer.metrics import EpochReport

    report, png, history = EpochReport(str(tmp_path), str(tmp_path / "logs")), tmp_path / "learning_curves.png", []
    drawn = []
    for epoch in range(1, 5):
        history.append(
            {
                "epoch": epoch,
                "phase": "head",
                "loss": 1.0 / epoch,
                "accuracy": 0.5,
                "val_loss": 1.0 / epoch,
                "val_accuracy": 0.5,
                "lr": 1e-3,
                "epoch_seconds": 0.1,
                "train_seconds": 0.05,
                "images_per_sec": 1.0,
                "feature_cache": 1,
            }
        )
        png.unlink(missing_ok=True)
        report.write(history, total_epochs=4)
        drawn.append(png.exists())
    assert drawn == [True, False, False, True]
    report.PLOT_SECONDS = 0.0  # every epoch once the interval has passed
    png.unlink()
    report.write(history, total_epochs=9)
    assert png.exists()

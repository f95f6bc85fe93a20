"""`mpsearch eval` takes --size like generate, and scores models the digit classifier cannot read (colour or
larger images) without the class-based metrics, with a note, instead of failing."""

from __future__ import annotations

import numpy as np
from cli_helpers import run

from mpsearch.apps.evaluate import image_scores
from mpsearch.classifier import load_classifier


def test_eval_passes_size_to_generation(capsys, tmp_path, monkeypatch):
    """--size reaches the pipeline (the digits model has a fixed size, so it says so), not 'unrecognized'."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "eval", "--size", "16", "--labels", "0", "--seeds", "1000", "--steps", "1")
    assert code == 2 and "fixed image size" in err and err.count("\n") == 1, err


def test_colour_images_get_no_digit_metrics_but_a_note():
    rng = np.random.default_rng(0)
    ref = rng.random((2, 8, 8, 3), dtype=np.float32)
    out = np.clip(ref + 0.01, 0, 1)
    scores = image_scores(ref, out, np.array([0, 1]), load_classifier())
    assert "class_agreement" not in scores and "frechet" not in scores
    assert "skipped" in scores["note"] and "8x8 with 3 channel(s)" in scores["note"]
    assert scores["mse"] > 0


def test_digit_images_keep_the_class_metrics():
    rng = np.random.default_rng(0)
    from mpsearch.apps.evaluate import classifier_reads

    ref = rng.random((3, 16, 16, 1), dtype=np.float32)
    assert classifier_reads(ref) and not classifier_reads(ref[..., [0, 0, 0]])
    scores = image_scores(ref, ref, np.array([0, 1, 2]), load_classifier())
    assert "class_agreement" in scores and "frechet" in scores and "note" not in scores

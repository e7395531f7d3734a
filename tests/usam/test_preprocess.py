"""Preprocessing of HU slices and logits back to slice resolution."""
import numpy as np
import pytest
import torch

from usam.errors import VolumeError
from usam.preprocess import MEAN, STD, logits_to_labels, preprocess_slices


def test_window_normalise_and_resize():
    hu = np.array([[-1000.0, -150.0], [50.0, 3000.0]], np.float32)
    x = preprocess_slices(np.repeat(np.repeat(hu, 112, 0), 112, 1), window=(-150, 250))
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    v = x[0, 0] * STD + MEAN
    assert v[0, 0].item() == pytest.approx(0.0, abs=1e-6)      # clipped low
    assert v[0, 223].item() == pytest.approx(0.0, abs=1e-6)    # window bottom
    assert v[223, 0].item() == pytest.approx(0.5, abs=1e-6)    # 50 HU = middle of [-150, 250]
    assert v[223, 223].item() == pytest.approx(1.0, abs=1e-6)  # clipped high
    assert torch.equal(x[0, 0], x[0, 2])


def test_batch_of_slices_and_bad_input():
    x = preprocess_slices(np.zeros((3, 100, 80)), window=(0, 1))
    assert x.shape == (3, 3, 224, 224)
    with pytest.raises(VolumeError):
        preprocess_slices(np.zeros((2, 2, 2, 2)))
    with pytest.raises(VolumeError):
        preprocess_slices(np.zeros((4, 4)), window=(5, 5))


def test_logits_are_resized_before_argmax():
    # a 1-px class-1 line at 224; upsampled logits keep it at 512, probabilities sum to one
    logits = torch.zeros(1, 3, 224, 224)
    logits[0, 0] = 1.0
    logits[0, 1, 100, :] = 5.0
    labels, probs = logits_to_labels(logits, (512, 512))
    assert labels.shape == (1, 512, 512) and labels.dtype == np.uint8
    assert probs.shape == (1, 3, 512, 512) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    rows = np.nonzero((labels[0] == 1).any(1))[0]
    assert 2 <= len(rows) <= 5 and abs(rows.mean() - (100 + 0.5) * 512 / 224 + 0.5) < 1.5
    same, _ = logits_to_labels(logits, (224, 224))
    assert (same[0] == 1).sum() == 224

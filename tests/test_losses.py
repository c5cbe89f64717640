"""Losses against numbers worked out by hand from the formulas (Rethinking section 7, GoogLeNet aux 0.3)."""

import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax import losses

# Three examples, three classes. For logits (2, 1, 0) and label 0:
#   log Z = log(e^2 + e + 1) = 2.407606, log p = (-0.407606, -1.407606, -2.407606),
#   q' = (0.9 + 0.1/3, 0.1/3, 0.1/3), loss = 0.933333 * 0.407606 + 0.033333 * (1.407606 + 2.407606) = 0.507606.
LOGITS = jnp.array([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 2.0, 3.0]])
LABELS = jnp.array([0, 2, 0])
PER_EXAMPLE = np.array([0.50760596, 0.29492296, 2.30760596])  # eps = 0.1
AUX0 = jnp.array([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0], [3.0, 0.0, -3.0]])
AUX0_PER_EXAMPLE = np.array([1.7413113, 1.09861229, 0.35094576])
AUX1 = jnp.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
AUX1_PER_EXAMPLE = np.array([1.09861229, 2.1728781, 1.51811138])


def test_smoothed_cross_entropy_matches_hand_computed():
    loss = losses.smoothed_cross_entropy(LOGITS, LABELS, 3, 0.1)
    np.testing.assert_allclose(loss, PER_EXAMPLE.mean(), rtol=1e-6)
    assert loss.dtype == jnp.float32 and loss.shape == ()


def test_no_smoothing_is_plain_cross_entropy():
    # -log softmax(2, 1, 0)[0] = 0.407606
    loss = losses.smoothed_cross_entropy(LOGITS[:1], LABELS[:1], 3, 0.0)
    np.testing.assert_allclose(loss, 0.40760596, rtol=1e-6)


def test_mask_averages_over_real_examples_only():
    mask = jnp.array([1, 0, 1])
    loss = losses.smoothed_cross_entropy(LOGITS, LABELS, 3, 0.1, mask=mask)
    np.testing.assert_allclose(loss, (PER_EXAMPLE[0] + PER_EXAMPLE[2]) / 2, rtol=1e-6)
    assert losses.smoothed_cross_entropy(LOGITS, LABELS, 3, 0.1, mask=jnp.zeros(3)) == 0.0


def test_bfloat16_logits_are_computed_in_float32():
    loss = losses.smoothed_cross_entropy(LOGITS.astype(jnp.bfloat16), LABELS, 3, 0.1)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, PER_EXAMPLE.mean(), rtol=1e-6)  # these logits are exact in bf16


def test_num_classes_must_match_logits():
    with pytest.raises(ValueError, match="num_classes=4"):
        losses.smoothed_cross_entropy(LOGITS, LABELS, 4, 0.1)


def test_aux_weighting_googlenet():
    loss, parts = losses.total_loss(
        LOGITS, (AUX0, AUX1), LABELS, num_classes=3, label_smoothing=0.1, aux_loss_weights=(0.3, 0.3)
    )
    assert set(parts) == {"main", "aux_0", "aux_1"}
    np.testing.assert_allclose(parts["main"], PER_EXAMPLE.mean(), rtol=1e-6)
    np.testing.assert_allclose(parts["aux_0"], AUX0_PER_EXAMPLE.mean(), rtol=1e-6)
    np.testing.assert_allclose(parts["aux_1"], AUX1_PER_EXAMPLE.mean(), rtol=1e-6)
    # 1.036712 + 0.3 * 1.063623 + 0.3 * 1.596534 = 1.834759
    expected = PER_EXAMPLE.mean() + 0.3 * AUX0_PER_EXAMPLE.mean() + 0.3 * AUX1_PER_EXAMPLE.mean()
    np.testing.assert_allclose(expected, 1.834759, rtol=1e-6)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_no_aux_heads_is_the_main_loss():
    loss, parts = losses.total_loss(LOGITS, (), LABELS, num_classes=3, label_smoothing=0.1, aux_loss_weights=())
    assert list(parts) == ["main"]
    np.testing.assert_allclose(loss, PER_EXAMPLE.mean(), rtol=1e-6)


def test_aux_count_mismatch_names_the_config_field():
    with pytest.raises(ValueError, match=r"config\.aux_loss_weights gives 1 weight.*2 aux head"):
        losses.total_loss(LOGITS, (AUX0, AUX1), LABELS, num_classes=3, label_smoothing=0.1, aux_loss_weights=(0.4,))
    with pytest.raises(ValueError, match=r"config\.aux_loss_weights gives 2 weight.*0 aux head"):
        losses.total_loss(LOGITS, (), LABELS, num_classes=3, label_smoothing=0.1, aux_loss_weights=(0.3, 0.3))


def test_topk_correct_with_mask():
    logits = jnp.array(
        [
            [0.1, 0.9, 0.3, 0.2],  # label 1: top-1 hit
            [0.5, 0.1, 0.4, 0.0],  # label 2: 2nd -> top-2 hit only
            [0.1, 0.2, 0.3, 0.4],  # label 0: last -> miss for k <= 3
            [0.9, 0.0, 0.0, 0.1],  # label 0: top-1 hit, but padding
        ]
    )
    labels = jnp.array([1, 2, 0, 0])
    mask = jnp.array([1, 1, 1, 0])
    assert int(losses.topk_correct(logits, labels, 1)) == 2
    assert int(losses.topk_correct(logits, labels, 1, mask=mask)) == 1
    assert int(losses.topk_correct(logits, labels, 2, mask=mask)) == 2
    assert int(losses.topk_correct(logits, labels, 4, mask=mask)) == 3
    assert losses.topk_correct(logits, labels, 1).dtype == jnp.int32

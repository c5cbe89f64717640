"""Helpers for parity tests against random-initialised timm / torchvision references.

Random references give meaningless eval logits (timm v3 ~1e13, torchvision GoogLeNet ~0.03), so
before comparing we calibrate them as REFERENCES.md §7 prescribes: random BN affine terms,
running statistics re-estimated from a few train-mode passes, then eval mode. Logits come out O(1)
and a wrong weight mapping shows.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def calibrate_batchnorm(model, input_size: int, *, seed: int = 0, passes: int = 3, batch: int = 4):
    """Randomises BN affine terms and re-estimates running stats; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # cumulative average over the calibration passes
                m.reset_running_stats()
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.4 - 0.2)
        model.train()
        for _ in range(passes):
            model(torch.randn(batch, 3, input_size, input_size, generator=gen))
    return model.eval()


def torch_state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def nchw(images_nhwc: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def assert_logits_close(ours, theirs, *, rel: float = 1e-4):
    """max |diff| <= rel * max(1, max |theirs|): the issue's fp32 parity tolerance."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    scale = max(1.0, float(np.abs(theirs).max()))
    diff = float(np.abs(ours - theirs).max())
    assert diff <= rel * scale, f"max |diff| {diff:.3g} > {rel} x {scale:.3g}"
    # Guard against vacuous passes: calibrated references give O(0.1-10) logits that vary by input.
    assert float(np.abs(theirs).max()) > 0.1 and float(np.std(theirs)) > 1e-3


def assert_float32_as_exact_as_reference(ours32, theirs32, exact, *, factor: float = 4.0, rel: float = 1e-4):
    """Our float32 outputs against the exact (float64) ones: within `rel` of their scale, or within `factor`
    times the reference's own float32 error, whichever is larger. A calibrated random network can be
    chaotic enough that a correct float32 run misses `rel`; the reference's float32 run measures how much."""
    ours32, theirs32, exact = (np.asarray(a, np.float64) for a in (ours32, theirs32, exact))
    assert ours32.shape == theirs32.shape == exact.shape, (ours32.shape, theirs32.shape, exact.shape)
    theirs_err, ours_err = np.abs(theirs32 - exact).max(), np.abs(ours32 - exact).max()
    bound = max(factor * theirs_err, rel * float(np.abs(exact).max()))
    assert ours_err <= bound, f"float32 error {ours_err:.3g} > {bound:.3g} (the reference's own: {theirs_err:.3g})"
    assert float(np.abs(exact).max()) > 0.1 and float(np.std(exact)) > 1e-3  # not a vacuous pass

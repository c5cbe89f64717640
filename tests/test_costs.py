"""Issue 8: the seeds' cost claims, counted on our own layers and modules (`inception_jax.tools.costs`), pinned
to the numbers the papers print."""

from __future__ import annotations

import pytest

from inception_jax.tools import costs


def _by_name(rows):
    return {r["comparison"]: r for r in rows}


def test_single_layer_claims_of_rethinking_sections_3_1_and_3_2():
    rows = _by_name(costs._single_layer_rows())
    ratio = lambda r: r["macs_a"] / r["macs_b"]
    assert ratio(rows["a 5x5 conv vs a 3x3 conv"]) == pytest.approx(25 / 9)  # "2.78 times more expensive"
    assert ratio(rows["two 3x3 convs vs one 5x5 conv"]) == pytest.approx(18 / 25)  # "28% reduction"
    assert ratio(rows["1x3 + 3x1 vs a 3x3 conv"]) == pytest.approx(6 / 9)  # "33% cheaper"
    # Parameters follow the same ratios (plus BatchNorm's 2 x 64 per layer).
    r = rows["a 5x5 conv vs a 3x3 conv"]
    assert (r["params_a"], r["params_b"]) == (25 * 64 * 64 + 128, 9 * 64 * 64 + 128)


def test_googlenet_inception_3a_naive_vs_reduced():
    rows = _by_name(costs._module_rows())
    reduced = rows["GoogLeNet (3a): naive vs dimension-reduced"]
    # Paper Table 1: inception (3a) costs 128M operations (with its true 5x5 branch).
    assert round(reduced["macs_b"] / 1e6) == 128
    assert reduced["macs_a"] > 2 * reduced["macs_b"]  # the naive module, on the same input


def test_the_cli_prints_markdown_and_rejects_unknown_models(capsys):
    assert costs.main(["--models", "googlenet"]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("# The papers' cost claims") and "| `googlenet` | 224 | 6,624,904 | 13,004,888 | 1.498 |" in out
    )
    assert costs.main(["--models", "googlenett"]) == 2
    assert capsys.readouterr().err.startswith("error: --models googlenett: ")

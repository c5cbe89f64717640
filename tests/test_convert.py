"""Weight import safety and file round trips (family parity tests live in the family test files)."""

from __future__ import annotations

import os
import pickle

import jax
import numpy as np
import pytest

from inception_jax.models import profile
from inception_jax.tools import convert

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def googlenet_state():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True, transform_input=False)
    return {k: v for k, v in model.state_dict().items()}


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pth_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.conv.weight": torch.zeros(1), "payload": _RunsCode(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refusing to load"):
        convert.from_torch("googlenet", str(path))
    assert not marker.exists(), "unpickling ran code"


def test_plain_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump(_RunsCode(str(marker)), f)
    with pytest.raises(ValueError, match="refusing to load"):
        convert.load_torch_state_dict(str(path))
    assert not marker.exists()


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        convert.from_torch("googlenet", str(tmp_path / "nope.pth"))


def test_pth_and_safetensors_give_the_same_variables(tmp_path, googlenet_state):
    from safetensors.torch import save_file

    torch.save(googlenet_state, tmp_path / "g.pth")
    save_file({k: v.contiguous() for k, v in googlenet_state.items()}, tmp_path / "g.safetensors")
    a = convert.from_torch("googlenet", str(tmp_path / "g.pth"))
    b = convert.from_torch("googlenet", str(tmp_path / "g.safetensors"))
    c = convert.from_torch("googlenet", {"state_dict": googlenet_state})  # nested checkpoints unwrap
    for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    assert profile.count_params(a["params"]) == 6_624_904


def test_missing_and_unexpected_keys_are_all_listed(googlenet_state):
    state = dict(googlenet_state)
    del state["inception3a.branch1.conv.weight"]
    state["bogus.weight"] = torch.zeros(3)
    with pytest.raises(convert.WeightMismatchError) as err:
        convert.from_torch("googlenet", state)
    msg = str(err.value)
    assert "unexpected in file (1)" in msg and "bogus.weight" in msg
    assert "missing from file (1)" in msg and "inception3a/branch1/conv/kernel" in msg


def test_wrong_class_count_says_how_to_fix(googlenet_state):
    state = dict(googlenet_state)
    state["fc.weight"] = torch.zeros(10, 1024)
    state["fc.bias"] = torch.zeros(10)
    with pytest.raises(convert.WeightMismatchError, match="num_classes"):
        convert.from_torch("googlenet", state)
    variables = convert.from_torch("googlenet", state, num_classes=10)
    assert variables["params"]["fc"]["kernel"].shape == (1024, 10)


def test_weights_of_another_variant_are_rejected():
    ref = timm.create_model("inception_v4", pretrained=False)
    with pytest.raises(convert.WeightMismatchError, match="another variant|inception_v3"):
        convert.from_torch("inception_v3", ref.state_dict())


def test_aux_weights_need_a_decision():
    ref = timm.create_model("inception_v3", pretrained=False, aux_logits=True)
    state = ref.state_dict()
    with pytest.raises(convert.WeightMismatchError, match="aux_logits=True"):
        convert.from_torch("inception_v3", state)
    no_aux = convert.from_torch("inception_v3", state, drop_aux=True)
    assert profile.count_params(no_aux["params"]) == 23_834_568


def test_cli_writes_a_file_that_loads_back_in_one_call(tmp_path, googlenet_state, capsys):
    from inception_jax.tools.convert.__main__ import main as cli

    torch.save(googlenet_state, tmp_path / "g.pth")
    out = tmp_path / "g.msgpack"
    assert cli(["--model", "googlenet", str(tmp_path / "g.pth"), str(out)]) == 0
    assert "6,624,904 parameters" in capsys.readouterr().out
    model, variables = convert.load_variables(out)
    expected = convert.from_torch("googlenet", googlenet_state)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)
    x = np.zeros((1, 64, 64, 3), np.float32)
    logits, _ = jax.jit(model.apply)(variables, x)
    assert logits.shape == (1, 1000)


def test_cli_reports_mismatches_with_exit_status(tmp_path, googlenet_state, capsys):
    from inception_jax.tools.convert.__main__ import main as cli

    torch.save(googlenet_state, tmp_path / "g.pth")
    assert cli(["--model", "inception_v3", str(tmp_path / "g.pth"), str(tmp_path / "o.msgpack")]) == 1
    assert "weights do not fit model 'inception_v3'" in capsys.readouterr().err
    assert not (tmp_path / "o.msgpack").exists()


def test_load_variables_rejects_foreign_files(tmp_path):
    path = tmp_path / "x.msgpack"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not an inception_jax variables file"):
        convert.load_variables(path)

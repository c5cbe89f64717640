"""`inception_jax.tools.fid` against pytorch-fid (REFERENCES.md §8), with random weights: nothing is downloaded.

pytorch-fid builds its network inside `fid_inception_v3()`, which downloads the weights; here that
download (`pytorch_fid.inception.load_state_dict_from_url`) returns a random state_dict instead, BN
calibrated as `reference_models.calibrate_batchnorm` does, so the real pytorch-fid code runs on weights
we also hand to our side. One batch size (`BATCH`) throughout, so the network compiles once per session
(the jitted function is shared by every extractor built from the same module).

Cost on 2 CPU cores: PyTorch's forward passes dominate, so everything runs at batch 2 with 3 images per
check; no test takes a 2048x2048 matrix square root (20-50 s here), see the end-to-end test.
"""

from __future__ import annotations

import contextlib
import re
import warnings

import jax
import numpy as np
import pytest
import scipy.linalg
from PIL import Image
from reference_models import assert_logits_close, calibrate_batchnorm, nchw

from inception_jax.models import profile, registry
from inception_jax.tools import convert, fid

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_fid")
from pytorch_fid import fid_score  # noqa: E402
from pytorch_fid import inception as pfid  # noqa: E402
from torchvision.transforms import functional as TF  # noqa: E402

BATCH = 2
CLI = ["--batch-size", str(BATCH), "--no-progress", "--num-workers", "2"]


def _random_pytorch_fid_state() -> dict:
    """A state_dict for pytorch-fid's network: its module tree (torchvision's Inception3 with the
    FIDInception* blocks swapped in, as `fid_inception_v3()` assembles it) with random, calibrated BN."""
    net = pfid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    blocks = {
        "Mixed_5b": pfid.FIDInceptionA(192, pool_features=32),
        "Mixed_5c": pfid.FIDInceptionA(256, pool_features=64),
        "Mixed_5d": pfid.FIDInceptionA(288, pool_features=64),
        "Mixed_6b": pfid.FIDInceptionC(768, channels_7x7=128),
        "Mixed_6c": pfid.FIDInceptionC(768, channels_7x7=160),
        "Mixed_6d": pfid.FIDInceptionC(768, channels_7x7=160),
        "Mixed_6e": pfid.FIDInceptionC(768, channels_7x7=192),
        "Mixed_7b": pfid.FIDInceptionE_1(1280),
        "Mixed_7c": pfid.FIDInceptionE_2(2048),
    }
    for name, block in blocks.items():
        setattr(net, name, block)
    torch.manual_seed(0)
    calibrate_batchnorm(net, 299, passes=2, batch=2)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@contextlib.contextmanager
def _download_returns(state):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pfid, "load_state_dict_from_url", lambda *args, **kwargs: state)
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """pytorch-fid's own objects on random weights: `net` (fid_inception_v3()), `wrapper`
    (InceptionV3([3]): resize + normalise + pool3), and the weights as a `.pth` file."""
    state = _random_pytorch_fid_state()
    with _download_returns(state):
        net = pfid.fid_inception_v3().eval()
        wrapper = pfid.InceptionV3([pfid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    pth = tmp_path_factory.mktemp("weights") / fid.FID_WEIGHTS_NAME
    torch.save(state, pth)
    return {"state": state, "net": net, "wrapper": wrapper, "pth": str(pth)}


@pytest.fixture(scope="module")
def extractor(reference):
    variables = convert.from_torch(fid.FID_MODEL, {k: v.numpy() for k, v in reference["state"].items()})
    return fid.FeatureExtractor(registry.create_model(fid.FID_MODEL), variables, batch_size=BATCH)


def _torch_pool3(wrapper, images01_nhwc) -> np.ndarray:
    with torch.no_grad():
        return wrapper(nchw(images01_nhwc))[0].flatten(1).numpy()


def _smooth_images(rng, n, h, w, shift=0.0) -> np.ndarray:
    """uint8 images with structure at several scales (pure noise would make every image alike)."""
    coarse = rng.random((n, 4, 4, 3))
    yy, xx = np.meshgrid(np.linspace(0, 3, h), np.linspace(0, 3, w), indexing="ij")
    y0, x0 = np.floor(yy).astype(int), np.floor(xx).astype(int)
    fy, fx = (yy - y0)[None, ..., None], (xx - x0)[None, ..., None]
    c = lambda dy, dx: coarse[:, np.minimum(y0 + dy, 3), np.minimum(x0 + dx, 3)]
    img = (1 - fy) * ((1 - fx) * c(0, 0) + fx * c(0, 1)) + fy * ((1 - fx) * c(1, 0) + fx * c(1, 1))
    img = 0.8 * img + 0.2 * rng.random((n, h, w, 3)) + shift
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _write_pngs(folder, images, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / (names[i] if names else f"{i:03d}.png"))
    return folder


@contextlib.contextmanager
def _quiet_scipy():
    """pytorch-fid passes `disp=False` to sqrtm, deprecated since scipy 1.16, and lets sqrtm warn about
    the singular products that its (and our) eps retry then handles."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _run_cli(capsys, *args):
    rc = fid.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# --- The network and the weights -----------------------------------------------------------------


def test_pytorch_fid_module_has_the_registered_parameter_count(reference):
    n_torch = sum(
        v.numel()
        for k, v in reference["state"].items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    variables = profile.abstract_variables(registry.create_model(fid.FID_MODEL), 299)
    assert n_torch == profile.count_params(variables["params"]) == 23_850_960


def test_logits_and_pool3_match_pytorch_fid_at_299(reference, extractor):
    x01 = np.random.default_rng(1).random((BATCH, 299, 299, 3), dtype=np.float32)
    logits, pool3 = extractor.network(2 * x01 - 1)
    seen = {}
    hook = reference["net"].avgpool.register_forward_hook(lambda m, i, o: seen.setdefault("pool3", o.flatten(1)))
    try:
        with torch.no_grad():
            their_logits = reference["net"](nchw(2 * x01 - 1)).numpy()
    finally:
        hook.remove()
    assert their_logits.shape == (BATCH, 1008)
    assert_logits_close(logits, their_logits)
    assert_logits_close(pool3, seen["pool3"].numpy())


def test_converted_msgpack_loads_as_the_fid_network(reference, extractor, tmp_path, capsys):
    """pytorch-fid's .pth -> `inception-convert` -> `load_fid_model`: the same variables."""
    from inception_jax.tools.convert.__main__ import main as convert_main

    out = tmp_path / "fid.msgpack"
    assert convert_main(["--model", fid.FID_MODEL, reference["pth"], str(out)]) == 0
    assert "23,850,960 parameters" in capsys.readouterr().out
    model, variables = fid.load_fid_model(out)
    assert model == extractor.model
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), variables, extractor.variables)
    assert all(jax.tree.leaves(same))


# --- Input pipeline --------------------------------------------------------------------------------


@pytest.mark.parametrize("h, w", [(64, 64), (128, 96), (32, 32), (512, 512), (300, 299), (1000, 37)])
def test_resize_matches_torch_interpolate_without_antialiasing(h, w):
    images = _smooth_images(np.random.default_rng(h * w), 2, h, w)
    ours = np.asarray(fid.to_network_input(images))
    theirs01 = torch.stack([TF.to_tensor(Image.fromarray(im)) for im in images])  # pytorch-fid's ToTensor
    theirs = 2 * torch.nn.functional.interpolate(theirs01, size=(299, 299), mode="bilinear", align_corners=False) - 1
    np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-6)
    if (h, w) == (512, 512):  # the antialiased resize JAX does by default is a different function
        blurred = jax.image.resize(images.astype(np.float32) / 255, (2, 299, 299, 3), "linear")
        assert np.abs(2 * np.asarray(blurred) - 1 - ours).max() > 1e-2


def test_mixed_size_folder_features_match_pytorch_fid_per_image(reference, extractor, tmp_path):
    """Images of two sizes, interleaved, one smaller and one larger than 299: batched by size, with a
    padded part-batch, each feature equals pytorch-fid's wrapper on that image (its batch size 1 result)."""
    rng = np.random.default_rng(2)
    small, large = _smooth_images(rng, 1, 96, 128), _smooth_images(rng, 2, 400, 320)
    folder = _write_pngs(tmp_path / "mixed", [large[0], small[0], large[1]], ["a.png", "b.jpg.png", "c.png"])
    (folder / "skipped.txt").write_text("not an image")
    files = fid.list_images(folder)
    assert [f.name for f in files] == ["a.png", "b.jpg.png", "c.png"]
    ours = extractor.features_of_files(files, progress=False)
    to01 = lambda imgs: np.stack([TF.to_tensor(Image.fromarray(im)).numpy().transpose(1, 2, 0) for im in imgs])
    theirs_large = _torch_pool3(reference["wrapper"], to01(large))
    theirs_small = _torch_pool3(reference["wrapper"], to01(small))
    assert_logits_close(ours[[0, 2]], theirs_large)
    assert_logits_close(ours[[1]], theirs_small)


def test_many_sizes_keep_order_and_bounded_buffers(extractor, tmp_path, monkeypatch):
    """Batching by size, without the network: every batch holds one size, part-batches are flushed once
    more than 4 batches' worth of images wait, and each feature lands at its file's index."""
    sizes = [(75 + i, 80) for i in range(10)] + [(75, 80), (76, 80), (90, 80), (91, 80)]
    images = [np.full((h, w, 3), i, np.uint8) for i, (h, w) in enumerate(sizes)]
    files = [_write_pngs(tmp_path, [im], [f"{i:02d}.png"]) / f"{i:02d}.png" for i, im in enumerate(images)]
    batches = []

    def fake_dispatch(batch_images, batch):  # the real one pads to `batch` and runs the network
        assert batch == BATCH and 1 <= len(batch_images) <= batch
        batches.append([int(im[0, 0, 0]) for im in batch_images])
        ids = np.zeros((batch, fid.FEATURE_DIM), np.float32)
        ids[: len(batch_images)] = batch_images[:, :1, 0, 0]
        return ids

    monkeypatch.setattr(extractor, "_dispatch", fake_dispatch)
    feats = extractor.features_of_files(files, progress=False, num_workers=2)
    np.testing.assert_array_equal(feats[:, 0], np.arange(len(sizes)))
    # Ten sizes in a row: at the ninth image 9 > 4 x 2 wait, so image 0 goes alone, then image 1.
    assert batches[:2] == [[0], [1]]
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))


def test_listing_follows_pytorch_fid(tmp_path, capsys):
    folder = tmp_path / "f"
    folder.mkdir()
    for name in ["b.png", "a.JPEG", "c.webp", "d.tif", "e.txt", "noext", "f.PNG.png", "g.jpeg"]:
        (folder / name).write_bytes(b"")
    (folder / "sub.png").mkdir()
    assert [p.name for p in fid.list_images(folder)] == ["b.png", "c.webp", "d.tif", "f.PNG.png", "g.jpeg"]
    assert fid._folder_images(str(folder))
    assert "'a.JPEG'" in capsys.readouterr().err  # skipped, as pytorch-fid's case-sensitive glob does


# --- Statistics and the distance -------------------------------------------------------------------


def _random_stats(rng, d):
    a = rng.standard_normal((d, 2 * d))
    return rng.standard_normal(d), a @ a.T / (2 * d) + 0.1 * np.eye(d)


def test_frechet_distance_equals_pytorch_fid_on_well_conditioned_statistics():
    rng = np.random.default_rng(3)
    (m1, s1), (m2, s2) = _random_stats(rng, 48), _random_stats(rng, 48)
    ours = fid.frechet_distance(m1, s1, m2, s2)
    with _quiet_scipy():
        theirs = fid_score.calculate_frechet_distance(m1, s1, m2, s2)
    assert ours == pytest.approx(theirs, rel=1e-9) and ours > 1


def test_frechet_distance_hand_checked_cases():
    rng = np.random.default_rng(4)
    mu, sigma = _random_stats(rng, 16)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)
    # Diagonal covariances: sum (m1 - m2)^2 + sum (sqrt(v1) - sqrt(v2))^2.
    m1, m2, v1, v2 = rng.standard_normal(8), rng.standard_normal(8), rng.random(8) + 0.1, rng.random(8) + 0.1
    closed = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert fid.frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(closed, rel=1e-12)
    assert fid.frechet_distance([1.0], [[4.0]], [0.0], [[1.0]]) == pytest.approx(1.0 + 1.0)  # scalars
    with pytest.raises(fid.FIDInputError, match="different lengths"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_frechet_distance_singular_and_invalid_products_follow_pytorch_fid(capsys):
    """A product without a square root (inf from sqrtm) gets eps on both diagonals, as in pytorch-fid;
    one with a clearly imaginary root is an error in both."""
    nilpotent, eye = np.array([[0.0, 1.0], [0.0, 0.0]]), np.eye(2)
    ours = fid.frechet_distance(np.zeros(2), nilpotent, np.zeros(2), eye)
    assert "singular" in capsys.readouterr().err
    with _quiet_scipy():
        theirs = fid_score.calculate_frechet_distance(np.zeros(2), nilpotent, np.zeros(2), eye)
    assert ours == pytest.approx(theirs, rel=1e-9)
    with pytest.raises(ValueError, match="imaginary"):
        fid.frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), eye)


def test_statistics_are_float64_and_npz_round_trips(tmp_path):
    feats = np.random.default_rng(5).standard_normal((5, 7)).astype(np.float32)
    mu, sigma = fid.feature_statistics(feats)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-15)
    fid.save_statistics(tmp_path / "s.npz", mu, sigma)
    with np.load(tmp_path / "s.npz") as f:  # exactly pytorch-fid's keys
        assert sorted(f.files) == ["mu", "sigma"]
    m2, s2 = fid.load_statistics(tmp_path / "s.npz")
    assert np.array_equal(m2, mu) and np.array_equal(s2, sigma)
    with pytest.raises(fid.FIDInputError, match="N >= 2"):
        fid.feature_statistics(feats[:1])


# --- Command line ----------------------------------------------------------------------------------


def _recorder(calls, value=0.0):
    def record(mu1, sigma1, mu2, sigma2, eps=1e-6):
        calls.append((mu1, sigma1, mu2, sigma2))
        return value

    return record


def test_cli_matches_pytorch_fid_end_to_end(reference, extractor, tmp_path, capsys, monkeypatch):
    """Our CLI and pytorch-fid's `calculate_fid_given_paths` on the same PNGs and weights reach the
    Fréchet distance with the same statistics, and our `.npz` holds them in a form pytorch-fid reads.

    The distance itself is checked against pytorch-fid above and in the next test: a 2048x2048
    `scipy.linalg.sqrtm` takes 20-50 s on this machine, so here both sides' distance calls are recorded
    instead of computed."""
    rng = np.random.default_rng(6)
    a = _write_pngs(tmp_path / "a", _smooth_images(rng, 3, 64, 64))
    b = _write_pngs(tmp_path / "b", _smooth_images(rng, 3, 64, 64, shift=0.15))

    ours, theirs = [], []
    with monkeypatch.context() as mp:
        mp.setattr(fid, "frechet_distance", _recorder(ours, 12.5))
        rc, out, err = _run_cli(capsys, a, b, "--weights", reference["pth"], *CLI)
        assert rc == 0, err
        assert out == "FID: 12.5\n"
        assert "is not pytorch-fid's pt_inception" in err and "give a covariance of rank < 2048" in err
        mp.setattr(fid_score, "calculate_frechet_distance", _recorder(theirs))
        with _download_returns(reference["state"]):
            fid_score.calculate_fid_given_paths([str(a), str(b)], BATCH, "cpu", 2048, num_workers=0)
    (ours,), (theirs,) = ours, theirs
    for mine, its in zip(ours, theirs):
        assert mine.dtype == its.dtype == np.float64
        assert_logits_close(mine, its)

    a_npz = tmp_path / "a.npz"
    rc, out, err = _run_cli(capsys, "--save-stats", a, a_npz, "--weights", reference["pth"], *CLI)
    assert rc == 0, err
    mu_read, sigma_read = fid_score.compute_statistics_of_path(str(a_npz), None, BATCH, 2048, "cpu")
    assert np.array_equal(mu_read, ours[0]) and np.array_equal(sigma_read, ours[1])


def test_cli_fid_of_npz_files_equals_pytorch_fid(reference, tmp_path, capsys):
    """The printed score, from statistics files only (no weights needed): pytorch-fid's own value."""
    rng = np.random.default_rng(8)
    for name in ("x", "y"):
        fid.save_statistics(tmp_path / f"{name}.npz", *_random_stats(rng, 64))
    x, y = tmp_path / "x.npz", tmp_path / "y.npz"
    rc, out, err = _run_cli(capsys, x, y, "--no-progress")
    assert rc == 0, err
    with _download_returns(reference["state"]), _quiet_scipy():
        theirs = fid_score.calculate_fid_given_paths([str(x), str(y)], BATCH, "cpu", 2048, num_workers=0)
    assert float(re.fullmatch(r"FID: (\S+)\n", out).group(1)) == pytest.approx(theirs, rel=1e-12)


def test_cli_bad_inputs_fail_in_one_line_before_compiling(reference, tmp_path, capsys, monkeypatch):
    def no_compile(*args, **kwargs):
        raise AssertionError("a bad input reached the network")

    monkeypatch.setattr(fid, "_network", no_compile)
    monkeypatch.setattr(fid, "to_network_input", no_compile)
    good = _write_pngs(tmp_path / "good", _smooth_images(np.random.default_rng(7), 2, 80, 80))
    (tmp_path / "empty").mkdir()
    np.savez(tmp_path / "wrong_keys.npz", mean=np.zeros(3), cov=np.eye(3))
    fid.save_statistics(tmp_path / "s16.npz", np.zeros(16), np.eye(16))
    fid.save_statistics(tmp_path / "s2048.npz", np.zeros(2048), np.eye(2048))
    torch.save({"conv.weight": torch.zeros(2, 3, 1, 1)}, tmp_path / "other.pth")
    small_v3 = registry.create_model("inception_v3", width_multiplier=0.25)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), profile.abstract_variables(small_v3, 75))
    convert.save_variables(tmp_path / "v3.msgpack", zeros, model="inception_v3", options={"width_multiplier": 0.25})

    weights = ["--weights", reference["pth"]]
    cases = [
        ([tmp_path / "nope", good, *weights], r"path '.*nope' does not exist"),
        ([tmp_path / "empty", good, *weights], r"has 0 image file\(s\); FID's covariance needs at least 2"),
        ([tmp_path / "wrong_keys.npz", good, *weights], r"holds \['cov', 'mean'\].*'mu' and 'sigma'"),
        ([tmp_path / "s16.npz", tmp_path / "s2048.npz"], r"different feature dimensions.*16.*2048"),
        ([tmp_path / "s16.npz", good, *weights], r"different feature dimensions"),
        ([good, good], rf"{fid.FID_WEIGHTS_NAME} from pytorch-fid's GitHub release \(https://github.com/.*\)"),
        ([good, good, "--weights", tmp_path / "missing.pth"], r"weights file .*missing.pth' does not exist; download"),
        ([good, good, "--weights", tmp_path / "other.pth"], r"is not the FID Inception network's state_dict"),
        (
            [good, good, "--weights", tmp_path / "v3.msgpack"],
            r"holds InceptionV3\(num_classes=1000, .*width_multiplier=0.25\), not the FID network",
        ),
        (["--save-stats", good, tmp_path / "s16.npz", *weights], r"will not overwrite"),
        (["--save-stats", good, tmp_path / "out.txt", *weights], r"writes an \.npz"),
        ([good, good, *weights, "--batch-size", "0"], r"--batch-size must be at least 1"),
    ]
    for args, message in cases:
        rc, out, err = _run_cli(capsys, *args, "--no-progress")
        assert rc == 2, (args, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert re.search(message, err), (message, err)

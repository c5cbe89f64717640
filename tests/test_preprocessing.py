"""Our evaluation preprocessing against each publisher's own, pixel by pixel on real JPEGs.

The chain "weights equal (the parity tests) + preprocessing equal (this file) => the publisher's
accuracy" needs the second link: for every preset in `inception_jax.preprocessing.PRESETS`, the image
our eval transform hands the network (`preprocess.decode` + `preprocess.eval_transform` + normalise, the
code path of the trainer's eval pipeline and of `inception-predict`) is compared with what the publisher's
own code hands its network: timm's `resolve_data_config` + `create_transform`, torchvision's
`Weights.transforms()` followed by the model's `transform_input`, Keras' `load_img` + `preprocess_input`,
pytorch-fid's decoding and `InceptionV3.forward`. The preset values themselves are read back from
those packages too.

Images: scikit-learn's two sample photographs (offline), cropped and resized with PIL into landscape,
portrait, smaller-than-the-input, odd and exact sizes, saved as JPEG (4:2:0 and 4:4:4 chroma), one
greyscale JPEG and one PNG.

Tolerances, in grey levels (1/255 before normalisation; assertions are made after normalisation, scaled
back by std x 255). Decoding is exact: TensorFlow decodes JPEGs with libjpeg's accurate DCT, as PIL does
(TensorFlow's default fast DCT alone is ~1 level off on average, up to 7). The resize is not: PIL
resamples in two 8-bit passes, rounding and clipping between them, while TensorFlow resamples in float32.
Measured on these 19 images (max over pixels / worst mean over one image / average of the means):
bilinear with antialiasing (torchvision, Keras) 1 / 0.18 / 0.14; bicubic (timm) 9 / 0.21 / 0.15, the
largest differences at sharp edges, where bicubic overshoots and PIL clips between its passes, and the
worst mean on the smallest image, upsampled 2.3x; pytorch-fid (a float resize, no rounding, against our
uint8 rounding) 0.5 / 0.24 / 0.19. Pillow moves by as much itself: resizing vertically before
horizontally, which recent Pillow releases do for some sizes, changes its own bicubic output by up to 7
levels and 0.17 on average on such images. The bounds below sit just above the measurements; the mean
bound is the tight one, and `test_a_shifted_or_wrong_transform_fails` shows that it fails a one-pixel
shift (mean 7-11 levels), a wrong crop_pct (14-17), ImageNet instead of Inception mean/std (13) and
bilinear instead of bicubic (1-1.9).
"""

from __future__ import annotations

import functools
import io
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
tf = pytest.importorskip("tensorflow")
from PIL import Image  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402
from timm.data import create_transform, resolve_data_config  # noqa: E402

from inception_jax import preprocessing  # noqa: E402
from inception_jax.preprocessing import PRESETS, EvalTransform  # noqa: E402
from inception_jax.trainer.data import preprocess  # noqa: E402

# (width, height) of the test images, cut from each photo (640x427) with the same aspect ratio.
SIZES = [(640, 427), (500, 375), (375, 500), (200, 150), (150, 260), (333, 517), (1001, 777), (299, 299)]
TIMM_TAGS = [name.removeprefix("timm/") for name in PRESETS if name.startswith("timm/")]
# timm presets compared pixel by pixel: both v3 normalisations, v4, and IR-v2's crop_pct 0.8975.
TIMM_PIXEL_TAGS = [
    "inception_v3.tv_in1k",
    "inception_v3.tf_in1k",
    "inception_v3.gluon_in1k",
    "inception_v4.tf_in1k",
    "inception_resnet_v2.tf_in1k",
]
# Bounds in grey levels: (per pixel, mean over the image); see the module docstring.
BICUBIC_PIL = (10.0, 0.25)
BILINEAR_PIL = (1.0 + 1e-3, 0.2)
FLOAT_RESIZE = (0.5 + 1e-3, 0.27)


def _encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _cut(photo: Image.Image, width: int, height: int) -> Image.Image:
    """The largest central box of the photo with the aspect ratio width:height, resized to that size."""
    scale = min(photo.width / width, photo.height / height)
    box_w, box_h = width * scale, height * scale
    left, top = max(0.0, (photo.width - box_w) / 2), max(0.0, (photo.height - box_h) / 2)
    return photo.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + box_w, top + box_h))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    """name -> path of the test images (files, since Keras' load_img reads paths)."""
    folder = tmp_path_factory.mktemp("photos")
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    encoded = {}
    for name, photo in zip(("china", "flower"), photos):
        for width, height in SIZES:
            encoded[f"{name}_{width}x{height}.jpg"] = _encode(_cut(photo, width, height), quality=90)
    encoded["china_444_411x287.jpg"] = _encode(_cut(photos[0], 411, 287), quality=95, subsampling=0)
    encoded["flower_grey_300x400.jpg"] = _encode(_cut(photos[1], 300, 400).convert("L"), quality=90)
    encoded["china_281x350.png"] = _encode(_cut(photos[0], 281, 350), "PNG")
    paths = {}
    for name, data in encoded.items():
        (folder / name).write_bytes(data)
        paths[name] = str(folder / name)
    return paths


@functools.cache  # presets with equal values (timm's v3 and v4 tags) share the work
def ours(path: str, transform: EvalTransform) -> np.ndarray:
    """Our eval transform of an image file, normalised: (H, W, 3) float32."""
    image = preprocess.decode(tf.io.read_file(path), 3)
    pixels = preprocess.eval_transform(image, transform).numpy()
    return preprocessing.normalize(pixels, transform.mean, transform.std)


def _pil(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")  # what timm's and torchvision's ImageFolder loaders do


def _levels(a: np.ndarray, b: np.ndarray, std) -> np.ndarray:
    """|a - b| of two normalised images in grey levels of the [0, 255] input."""
    return np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)) * np.asarray(std) * 255.0


def assert_close(mine: np.ndarray, theirs: np.ndarray, std, bounds: tuple[float, float], what: str) -> None:
    assert mine.shape == theirs.shape, (what, mine.shape, theirs.shape)
    diff = _levels(mine, theirs, std)
    if os.environ.get("PREPROCESSING_MEASURE"):
        print(f"{what}: max {diff.max():.4f} mean {diff.mean():.4f} grey levels")
    assert diff.max() <= bounds[0] and diff.mean() <= bounds[1], (
        f"{what}: max {diff.max():.3f}, mean {diff.mean():.4f} grey levels; allowed {bounds}"
    )


# --- timm ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_configs() -> dict[str, dict]:
    """timm's resolved eval config per tag, from the model as timm's validate.py resolves it (built on
    the meta device: no weights are allocated or initialised, which would take seconds per model)."""
    configs = {}
    for tag in TIMM_TAGS:
        with torch.device("meta"):
            configs[tag] = resolve_data_config({}, model=timm.create_model(tag, pretrained=False))
    return configs


def test_timm_presets_are_timms_pretrained_cfg(timm_configs):
    assert set(TIMM_TAGS) == {t for t in timm.list_models("inception_*", pretrained=True) if "next" not in t}
    for tag, cfg in timm_configs.items():
        transform = PRESETS[f"timm/{tag}"].transform
        assert cfg["crop_mode"] == "center" and transform.resize == "shorter_side" and transform.antialias
        assert cfg["input_size"] == (3, transform.image_size, transform.image_size), tag
        assert (cfg["crop_pct"], cfg["interpolation"]) == (transform.crop_pct, transform.interpolation), tag
        assert (tuple(cfg["mean"]), tuple(cfg["std"])) == (transform.mean, transform.std), tag


@functools.cache
def timm_reference(path: str, cfg_items: tuple) -> np.ndarray:
    """timm's eval transform (`create_transform(**cfg)`, is_training=False) of an image file: (H, W, 3)."""
    return create_transform(**dict(cfg_items))(_pil(path)).numpy().transpose(1, 2, 0)


@pytest.mark.parametrize("tag", TIMM_PIXEL_TAGS)
def test_equals_timm_eval_transform(tag, timm_configs, images):
    cfg = tuple(sorted(timm_configs[tag].items()))
    transform = PRESETS[f"timm/{tag}"].transform
    for name, path in images.items():
        theirs = timm_reference(path, cfg)
        assert_close(ours(path, transform), theirs, transform.std, BICUBIC_PIL, f"timm {tag} {name}")


def test_a_shifted_or_wrong_transform_fails(timm_configs, images):
    """The bounds above catch the mistakes that matter: one pixel off, crop_pct or normalisation wrong."""
    cfg = timm_configs["inception_v3.tf_in1k"]
    transform = PRESETS["timm/inception_v3.tf_in1k"].transform
    for name in ("china_500x375.jpg", "flower_375x500.jpg"):
        path = images[name]
        theirs = timm_reference(path, tuple(sorted(cfg.items())))
        mine = ours(path, transform)
        assert_close(mine, theirs, transform.std, BICUBIC_PIL, name)  # the right transform passes
        wrong = {
            "shifted one pixel right": (mine[:, 1:], theirs[:, :-1]),
            "shifted one pixel down": (mine[1:], theirs[:-1]),
            "crop_pct 0.8975": (ours(path, _replace(transform, crop_pct=0.8975)), theirs),
            "crop_pct 0.9": (ours(path, _replace(transform, crop_pct=0.9)), theirs),
            "ImageNet mean/std": (ours(path, _replace(transform, mean=(0.485, 0.456, 0.406))), theirs),
            "bilinear": (ours(path, _replace(transform, interpolation="bilinear")), theirs),
        }
        for what, (a, b) in wrong.items():
            with pytest.raises(AssertionError):
                assert_close(a, b, transform.std, BICUBIC_PIL, f"{name} {what}")


def _replace(transform: EvalTransform, **changes) -> EvalTransform:
    return EvalTransform(**(transform.to_dict() | changes | {"name": None}))


def test_trainer_eval_pipeline_is_the_same_code_path(images):
    """The trainer's eval map function (`pipeline._eval_fn`, fed config.input) gives the same uint8 images."""
    import ml_collections

    from inception_jax.trainer.data import pipeline

    for preset_name in (
        "timm/inception_resnet_v2.tf_in1k",
        "torchvision/googlenet",
        "keras/inception_v3",
        "pytorch-fid",
    ):
        transform = PRESETS[preset_name].transform
        config = ml_collections.ConfigDict({"input": transform.config_fields()})
        eval_fn = pipeline._eval_fn(config, 3)
        for name in ("china_375x500.jpg", "flower_200x150.jpg", "china_281x350.png"):
            encoded = tf.io.read_file(images[name])
            trainer = eval_fn({"image": encoded, "label": 0})["image"].numpy()
            mine = preprocess.eval_transform(preprocess.decode(encoded, 3), transform).numpy()
            np.testing.assert_array_equal(trainer, mine, err_msg=f"{preset_name} {name}")


# --- torchvision --------------------------------------------------------------------------------------

TORCHVISION = {
    "torchvision/inception_v3": ("Inception_V3_Weights", "inception_v3"),
    "torchvision/googlenet": ("GoogLeNet_Weights", "googlenet"),
}


@pytest.mark.parametrize("preset_name", list(TORCHVISION))
def test_equals_torchvision_transforms_and_transform_input(preset_name, images):
    enum_name, builder = TORCHVISION[preset_name]
    weights = getattr(torchvision.models, enum_name).IMAGENET1K_V1
    reference = weights.transforms()
    transform = PRESETS[preset_name].transform
    assert reference.crop_size == [transform.image_size] and reference.resize_size == [transform.scale_size]
    assert reference.interpolation.value == transform.interpolation and reference.antialias
    # What the weights are used with: torchvision sets transform_input=True for them, which maps the
    # ImageNet-normalised input onto (x - 0.5) / 0.5, what our models take.
    net = getattr(torchvision.models, builder)(weights=None, aux_logits=False, transform_input=True, init_weights=False)
    assert net.transform_input
    for name, path in images.items():
        with torch.no_grad():
            theirs = net._transform_input(reference(_pil(path))[None])[0].numpy().transpose(1, 2, 0)
        assert_close(ours(path, transform), theirs, transform.std, BILINEAR_PIL, f"{preset_name} {name}")


# --- Keras and pytorch-fid ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["inception_v3", "inception_resnet_v2"])
def test_equals_keras_load_img_and_preprocess_input(model, images):
    keras = pytest.importorskip("keras")
    application = getattr(keras.applications, model)
    transform = PRESETS[f"keras/{model}"].transform
    size = (transform.image_size, transform.image_size)
    for name, path in images.items():
        image = keras.utils.load_img(path, target_size=size, interpolation=transform.interpolation)
        theirs = application.preprocess_input(keras.utils.img_to_array(image))
        assert_close(ours(path, transform), theirs, transform.std, BILINEAR_PIL, f"keras {model} {name}")


def test_equals_pytorch_fid_forward(images):
    pfid = pytest.importorskip("pytorch_fid.inception")
    from pytorch_fid import fid_score

    # pytorch-fid's own forward pass, up to its first block: resize and [-1, 1] scaling.
    stub = pfid.InceptionV3.__new__(pfid.InceptionV3)
    torch.nn.Module.__init__(stub)
    stub.resize_input, stub.normalize_input = True, True
    stub.blocks = torch.nn.ModuleList([torch.nn.Identity()])
    stub.output_blocks, stub.last_needed_block = [0], 0
    transform = PRESETS["pytorch-fid"].transform
    paths = list(images.values())
    dataset = fid_score.ImagePathDataset(paths, transforms=torchvision.transforms.ToTensor())
    for i, path in enumerate(paths):
        with torch.no_grad():
            theirs = stub(dataset[i][None])[0][0].numpy().transpose(1, 2, 0)
        assert_close(ours(path, transform), theirs, transform.std, FLOAT_RESIZE, f"pytorch-fid {path}")


# --- The transform itself -----------------------------------------------------------------------------


def test_decoding_is_pils_exactly(images):
    for name, path in images.items():
        np.testing.assert_array_equal(preprocess.decode(tf.io.read_file(path), 3).numpy(), np.asarray(_pil(path)), name)


def test_eval_transform_round_trips_and_rejects_bad_values():
    for name, p in PRESETS.items():
        assert p.transform.name == name
        again = EvalTransform.from_dict(p.transform.to_dict())
        assert again == p.transform and again.name == name
    base = PRESETS["timm/inception_v3.tf_in1k"].transform.to_dict()
    for change, match in [
        ({"crop_pct": 0.0}, "crop_pct"),
        ({"crop_pct": 1.5}, "crop_pct"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"resize": "stretch"}, "resize"),
        ({"std": (0.5, 0.0, 0.5)}, "std"),
        ({"mean": (0.5, 0.5)}, "3 values"),
        ({"image_size": 0}, "image_size"),
        ({"image_size": 29.5}, "whole number"),
        ({"colour": "rgb"}, "unknown field"),
    ]:
        with pytest.raises(ValueError, match=match):
            EvalTransform.from_dict(base | change)
    with pytest.raises(ValueError, match="lacks"):
        EvalTransform.from_dict({"image_size": 299})
    with pytest.raises(ValueError, match="Did you mean 'timm/inception_v3.tf_in1k'"):
        preprocessing.preset("timm/inception_v3.tf_in1")


def test_presets_for_convert():
    assert preprocessing.presets_for("inception_v4", "torch") == ["timm/inception_v4.tf_in1k"]
    assert preprocessing.presets_for("googlenet", "torch") == ["torchvision/googlenet"]
    assert preprocessing.presets_for("inception_v3", "keras") == ["keras/inception_v3"]
    assert preprocessing.presets_for("fid_inception_v3", "torch") == ["pytorch-fid"]
    assert len(preprocessing.presets_for("inception_v3", "torch")) == 5
    assert preprocessing.presets_for("bn_inception", "torch") == []


def test_imagenet_class_names_follow_timm_and_tfds():
    names = preprocessing.imagenet_class_names(1000)
    info = timm.data.ImageNetInfo()
    assert preprocessing.imagenet_synsets() == tuple(info.label_names())  # the same class order
    assert names[0] == "tench" and names[1] == "goldfish" and len(set(names)) == 1000
    assert names[134] == "crane (n02012849)" and names[517] == "crane (n03126707)"
    assert all(info.index_to_description(i).split(",")[0] in names[i] for i in range(0, 1000, 37))
    slim = preprocessing.imagenet_class_names(1001)
    assert slim[0] == "background" and slim[1:] == names
    assert preprocessing.imagenet_class_names(10) is None

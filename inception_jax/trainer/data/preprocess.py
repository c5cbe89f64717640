"""Image preprocessing ops for tf.data map functions: pure TensorFlow, deterministic given a seed.

Every random op is a stateless one fed an explicit seed, which the pipeline derives per example from
(config.seed, epoch, index) with `example_seed`: a resumed run sees exactly the augmentations an
uninterrupted one would. Pixels: decoded uint8 in [0, 255]; crops and resizes return float32 in
[0, 255], clipped (bicubic overshoots); `color_distortion` works in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

_INTERPOLATIONS = {
    "bilinear": tf.image.ResizeMethod.BILINEAR,
    "bicubic": tf.image.ResizeMethod.BICUBIC,
    "nearest": tf.image.ResizeMethod.NEAREST_NEIGHBOR,
}

# Inception photometric distortion magnitudes (TF-slim inception_preprocessing.distort_color).
BRIGHTNESS_DELTA = 32.0 / 255.0
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 0.2
CONTRAST_RANGE = (0.5, 1.5)


def example_seed(seed: int, epoch, index) -> tf.Tensor:
    """The shape-(2,) int64 stateless seed of one example: a hash of (seed, epoch, index)."""
    key = tf.constant([seed, 0x1CE97], tf.int64)  # Second word: a fixed salt for the data stream.
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(epoch, tf.int64))
    return tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64))


def _split(seed, num: int) -> list[tf.Tensor]:
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=num))


# libjpeg's accurate integer DCT, which PIL (and so timm, torchvision, Keras' load_img) decodes with.
# TensorFlow's default is the fast DCT: about one grey level off on average, up to 7 (REFERENCES.md §10).
JPEG_DCT_METHOD = "INTEGER_ACCURATE"


def decode(encoded: tf.Tensor, channels: int) -> tf.Tensor:
    """Decodes a PNG/JPEG/GIF/BMP string to uint8 (H, W, channels); JPEGs to PIL's pixels exactly."""

    def jpeg():
        return tf.io.decode_jpeg(encoded, channels=channels, dct_method=JPEG_DCT_METHOD)

    def other():
        return tf.io.decode_image(encoded, channels=channels, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    image.set_shape([None, None, channels])
    return image


def resize(image: tf.Tensor, size: Sequence, interpolation: str = "bilinear", *, antialias: bool = True) -> tf.Tensor:
    """Resizes to `size` (height, width); float32 in [0, 255].

    With `antialias` (the default) the filter widens when shrinking, as PIL's does: against PIL's own
    resize, bilinear is within 1 grey level and bicubic within a few at sharp edges (0.15 on average),
    the same as two Pillow releases differ from each other (tests/test_preprocessing.py, REFERENCES.md §10).
    """
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation={interpolation!r}; expected one of {sorted(_INTERPOLATIONS)}")
    out = tf.image.resize(image, size, method=_INTERPOLATIONS[interpolation], antialias=antialias)
    return tf.clip_by_value(tf.cast(out, tf.float32), 0.0, 255.0)


def crop_window(
    image_shape: tf.Tensor,
    seed: tf.Tensor,
    *,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    max_attempts: int = 10,
) -> tf.Tensor:
    """The Inception random crop window of an image of shape `image_shape`: int32 [top, left, height, width].

    Samples a box covering a fraction `area_range` of the area with width/height in `aspect_ratio_range`
    (`tf.image.stateless_sample_distorted_bounding_box`, `max_attempts` tries). When every try fails the
    op returns the whole image; like torchvision's RandomResizedCrop, we then take the largest central
    crop whose aspect ratio lies in the range, so very wide or tall images are not squashed.
    """
    shape = tf.cast(image_shape[:2], tf.int32)
    height, width = shape[0], shape[1]
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([shape, [1]], 0),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,  # The area range alone bounds the crop (0.08 is the paper's floor).
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=max_attempts,
        use_image_if_no_bounding_boxes=True,
    )
    crop_h, crop_w = size[0], size[1]
    # Fallback: a whole-image result whose aspect ratio is out of range cannot be a valid sample.
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    ratio = w_f / h_f
    lo, hi = aspect_ratio_range
    fallback_w = tf.where(ratio > hi, tf.cast(tf.round(h_f * hi), tf.int32), width)
    fallback_h = tf.where(ratio < lo, tf.cast(tf.round(w_f / lo), tf.int32), height)
    is_whole = (crop_h == height) & (crop_w == width)
    crop_h = tf.where(is_whole, tf.clip_by_value(fallback_h, 1, height), crop_h)
    crop_w = tf.where(is_whole, tf.clip_by_value(fallback_w, 1, width), crop_w)
    top = tf.where(is_whole, (height - crop_h) // 2, begin[0])
    left = tf.where(is_whole, (width - crop_w) // 2, begin[1])
    return tf.stack([top, left, crop_h, crop_w])


def inception_crop(
    image: tf.Tensor,
    seed: tf.Tensor,
    image_size: int,
    *,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    max_attempts: int = 10,
    interpolation: str = "bilinear",
) -> tf.Tensor:
    """Inception random-sized crop of a decoded image, resized to (image_size, image_size); no flip.
    The crop covers 8%-100% of the area with aspect ratio in [3/4, 4/3] (GoogLeNet paper, section 6)."""
    window = crop_window(
        tf.shape(image),
        seed,
        area_range=area_range,
        aspect_ratio_range=aspect_ratio_range,
        max_attempts=max_attempts,
    )
    crop = tf.slice(image, [window[0], window[1], 0], [window[2], window[3], -1])
    out = resize(crop, [image_size, image_size], interpolation)
    out.set_shape([image_size, image_size, image.shape[-1]])
    return out


def decode_and_inception_crop(
    encoded: tf.Tensor,
    seed: tf.Tensor,
    image_size: int,
    *,
    channels: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    max_attempts: int = 10,
    interpolation: str = "bilinear",
) -> tf.Tensor:
    """`inception_crop` of an encoded image; JPEGs decode only the crop window (much cheaper on ImageNet).

    Same window as decoding first and calling `inception_crop`, and the same pixels for 4:4:4 JPEGs and
    other formats. With subsampled chroma (4:2:0, most photos) libjpeg upsamples the colour at the
    window's edge from inside the window only, so the outermost pixel row/column differs slightly.
    """
    kwargs = dict(area_range=area_range, aspect_ratio_range=aspect_ratio_range, max_attempts=max_attempts)

    def from_jpeg():
        window = crop_window(tf.image.extract_jpeg_shape(encoded), seed, **kwargs)
        crop = tf.image.decode_and_crop_jpeg(encoded, window, channels=channels, dct_method=JPEG_DCT_METHOD)
        return resize(crop, [image_size, image_size], interpolation)

    def from_other():
        return inception_crop(decode(encoded, channels), seed, image_size, interpolation=interpolation, **kwargs)

    out = tf.cond(tf.io.is_jpeg(encoded), from_jpeg, from_other)
    out.set_shape([image_size, image_size, channels])
    return out


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Horizontal flip with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def resize_flip(image: tf.Tensor, seed: tf.Tensor, image_size: int, *, interpolation: str = "bilinear") -> tf.Tensor:
    """Plain resize of the whole image to (image_size, image_size), then a random horizontal flip."""
    return random_flip(resize(image, [image_size, image_size], interpolation), seed)


def central_crop(image: tf.Tensor, image_size: int, crop_pct: float, *, interpolation: str = "bilinear") -> tf.Tensor:
    """Evaluation transform: shorter side to floor(image_size / crop_pct), then the central square.

    As timm's eval transform (torchvision `Resize(int)` + `CenterCrop`): the longer side scales to
    `int(scale * long / short)`, and the crop offset is `round((side - image_size) / 2)`, rounding
    half to even as Python's `round` does. `resize_and_crop` with `resize="shorter_side"`.
    """
    return resize_and_crop(image, image_size, crop_pct, interpolation=interpolation)


def resize_and_crop(
    image: tf.Tensor,
    image_size: int,
    crop_pct: float,
    *,
    interpolation: str = "bilinear",
    resize_mode: str = "shorter_side",
    antialias: bool = True,
) -> tf.Tensor:
    """Resize to `scale = floor(image_size / crop_pct)`, then take the central `image_size` square.

    `resize_mode="shorter_side"`: the shorter side becomes `scale` and the longer `int(scale * long /
    short)` (timm / torchvision). `"square"`: the whole image becomes `scale` x `scale`, aspect ratio
    not kept (Keras' `load_img(target_size=...)`, pytorch-fid; timm's crop_mode="squash").
    Float32 in [0, 255].
    """
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct={crop_pct}; expected 0 < crop_pct <= 1")
    if resize_mode not in ("shorter_side", "square"):
        raise ValueError(f"resize_mode={resize_mode!r}; expected 'shorter_side' or 'square'")
    scale_size = math.floor(image_size / crop_pct)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    if resize_mode == "square":
        new_h = new_w = tf.constant(scale_size, tf.int32)
    else:
        short = tf.minimum(height, width)
        # Integer arithmetic, so the longer side is exactly int(scale_size * long / short).
        new_h = tf.where(height == short, scale_size, (scale_size * height) // short)
        new_w = tf.where(width == short, scale_size, (scale_size * width) // short)
    resized = resize(image, tf.stack([new_h, new_w]), interpolation, antialias=antialias)
    top = tf.cast(tf.round(tf.cast(new_h - image_size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - image_size, tf.float32) / 2.0), tf.int32)
    out = tf.slice(resized, [top, left, 0], [image_size, image_size, -1])
    out.set_shape([image_size, image_size, image.shape[-1]])
    return out


def eval_transform(image: tf.Tensor, transform) -> tf.Tensor:
    """A decoded image -> uint8 (image_size, image_size, 3) per `transform` (an
    `inception_jax.preprocessing.EvalTransform`): resize, central crop, 3 channels, rounded to uint8.

    What the trainer's eval pipeline does for `config.input` (`central_crop`, then rounding); normalise
    the result with `transform.mean/std` (`normalize`, `inception_jax.preprocessing.normalize`).
    """
    out = resize_and_crop(
        image,
        transform.image_size,
        transform.crop_pct,
        interpolation=transform.interpolation,
        resize_mode=transform.resize,
        antialias=transform.antialias,
    )
    return tf.cast(tf.clip_by_value(tf.round(to_rgb(out)), 0.0, 255.0), tf.uint8)


def color_distortion(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Inception photometric distortion of an RGB float image in [0, 1]; the result is clipped to [0, 1].

    Random brightness (+-32/255), saturation (x0.5-1.5), hue (+-0.2) and contrast (x0.5-1.5), applied
    in one of four orders chosen at random per image, as TF-slim's Inception preprocessing does.
    """
    order_seed, brightness_seed, saturation_seed, hue_seed, contrast_seed = _split(seed, 5)
    ops = {
        "b": lambda x: tf.image.stateless_random_brightness(x, BRIGHTNESS_DELTA, brightness_seed),
        "s": lambda x: tf.image.stateless_random_saturation(x, *SATURATION_RANGE, seed=saturation_seed),
        "h": lambda x: tf.image.stateless_random_hue(x, HUE_DELTA, hue_seed),
        "c": lambda x: tf.image.stateless_random_contrast(x, *CONTRAST_RANGE, seed=contrast_seed),
    }

    def apply(order):
        def fn():
            x = image
            for op in order:
                x = ops[op](x)
            return tf.clip_by_value(x, 0.0, 1.0)

        return fn

    orders = ["bshc", "sbch", "chbs", "hscb"]
    branch = tf.random.stateless_uniform([], order_seed, minval=0, maxval=len(orders), dtype=tf.int32)
    return tf.switch_case(branch, [apply(order) for order in orders])


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Repeats a 1-channel (grayscale) image to 3 channels; 3-channel images pass through."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels != 3:
        raise ValueError(f"expected 1 or 3 channels (static shape), got image shape {image.shape}")
    return image


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """[0, 255] pixels -> (x / 255 - mean) / std; mean and std are per-channel in [0, 1] units."""
    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)
    return (tf.cast(image, tf.float32) / 255.0 - mean) / std

"""Fréchet Inception Distance (FID) in JAX, computed the way pytorch-fid computes it.

    inception-fid PATH1 PATH2 --weights pt_inception-2015-12-05-6726825d.pth

Scores compare across papers only with one network and one preprocessing, so this follows pytorch-fid
step by step: its `fid_inception_v3` weights (never downloaded), image listing, decoding and resize, and
float64 statistics in its `.npz` format (REFERENCES.md §8). Usage: docs/weights.md.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import os
import pathlib
import sys
import warnings
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from PIL import Image
from tqdm import tqdm

from inception_jax import kernels
from inception_jax.models import profile, registry
from inception_jax.tools.convert import WeightMismatchError, from_torch, load_variables

FID_MODEL = "fid_inception_v3"
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_NAME}"
INPUT_SIZE = 299
FEATURE_DIM = 2048
IMAGE_EXTENSIONS = frozenset({"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"})
DEFAULT_BATCH_SIZE = 50  # pytorch-fid's default
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")

_GET_WEIGHTS = (
    f"download {FID_WEIGHTS_NAME} from pytorch-fid's GitHub release ({FID_WEIGHTS_URL}) and pass "
    "its path with --weights; inception_jax never downloads weights"
)


class FIDInputError(ValueError):
    """A path, file or option that FID cannot use; the message names it and says what to do."""


# --- The network ------------------------------------------------------------------------------------


def load_fid_model(weights: str | os.PathLike | None):
    """Returns `(model, variables)` of the FID network from pytorch-fid's `.pth` (or a `.safetensors`
    copy), or from a `.msgpack` written by `inception-convert --model fid_inception_v3`.

    Raises `FIDInputError` when there is no file or it holds anything but the FID network.
    """
    if weights is None or os.fspath(weights) == "":
        raise FIDInputError(f"FID needs the FID Inception weights: {_GET_WEIGHTS}")
    path = os.fspath(weights)
    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "does not exist"
        raise FIDInputError(f"weights file {path!r} {what}; {_GET_WEIGHTS}")
    reference = registry.create_model(FID_MODEL)
    if path.endswith(TORCH_SUFFIXES):
        try:
            variables = from_torch(FID_MODEL, path)
        except WeightMismatchError as e:
            found = "; ".join(
                line.strip().rstrip(":")
                for line in str(e).splitlines()[1:]
                if line.startswith("  ") and not line.startswith("    ")
            )
            raise FIDInputError(
                f"{path!r} is not the FID Inception network's state_dict ({found}); FID needs "
                f"pytorch-fid's {FID_WEIGHTS_NAME}"
            ) from None
        except (ValueError, ImportError) as e:
            raise FIDInputError(str(e)) from None
        return reference, variables
    try:
        model, variables = load_variables(path)
    except (ValueError, KeyError) as e:
        raise FIDInputError(f"{e} (or pass pytorch-fid's {FID_WEIGHTS_NAME} itself)") from None
    if model != reference:
        raise FIDInputError(
            f"{path!r} holds {_describe(model, reference)}, not the FID network; convert pytorch-fid's weights "
            f"with `inception-convert --model {FID_MODEL} {FID_WEIGHTS_NAME} OUT.msgpack`"
        )
    _check_variable_shapes(path, reference, variables)
    return model, variables


def _describe(model, reference) -> str:
    differ = {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.init
        and f.name not in ("parent", "name")
        and hasattr(reference, f.name)
        and getattr(model, f.name) != getattr(reference, f.name)
    }
    return f"{type(model).__name__}({', '.join(f'{k}={v!r}' for k, v in differ.items())})"


def _check_variable_shapes(path: str, model, variables) -> None:
    """A msgpack file edited or written by hand could hold other shapes; say so now, not inside XLA."""
    want = jax.tree.map(lambda a: tuple(a.shape), profile.abstract_variables(model, INPUT_SIZE))
    have = jax.tree.map(lambda a: tuple(np.shape(a)), {k: variables.get(k, {}) for k in want})
    if want != have:
        raise FIDInputError(
            f"{path!r} does not hold the FID network's variables (their names or shapes differ); "
            f"convert {FID_WEIGHTS_NAME} again with `inception-convert`"
        )


@functools.partial(jax.jit, static_argnames=("size",))
def to_network_input(images, size: int = INPUT_SIZE):
    """NHWC images (uint8, or float in [0, 1]) -> float32 size x size in [-1, 1], as pytorch-fid feeds its
    network: bytes / 255, bilinear resize with half-pixel centres and no antialiasing, then 2x - 1.

    This equals torch's `F.interpolate(mode="bilinear", align_corners=False)` to 1-2 float32 ulps, also
    when shrinking; JAX's default `antialias=True` does not, and `jax.image.scale_and_translate` with a
    float32 scale is off by up to 3e-5."""
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "linear", antialias=False)
    return 2.0 * x - 1.0


def _network(model, variables, x, precision):
    with jax.default_matmul_precision(precision):
        logits, out = model.apply(variables, x, train=False)
    return logits, out["pre_logits"]


class FeatureExtractor:
    """Pool3 features of the FID network, in batches of one fixed shape (one network compile).

    `precision` is the matmul precision of the convolutions ("highest": full float32 on GPUs too).
    """

    def __init__(self, model, variables, *, batch_size: int = DEFAULT_BATCH_SIZE, precision: str = "highest"):
        if batch_size < 1:
            raise FIDInputError(f"batch size must be at least 1, got {batch_size}")
        self.model, self.batch_size, self.precision = model, int(batch_size), precision
        self.variables = jax.device_put(dict(variables))  # once, not with every batch
        self._jitted = jax.jit(
            _network, static_argnames=("model", "precision"), compiler_options=kernels.compiler_options(jax.devices())
        )

    def network(self, x):
        """`(logits, pool3)` of a batch already at 299 in [-1, 1]; any batch size (each compiles once)."""
        return self._jitted(self.model, self.variables, jnp.asarray(x, jnp.float32), self.precision)

    def _dispatch(self, images: np.ndarray, batch: int):
        """Starts one batch of same-sized images, zero-padded to `batch`; returns its features' device array."""
        n = len(images)
        if n < batch:
            pad = np.zeros((batch - n, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, pad])
        return self.network(to_network_input(images))[1]

    def features(self, images) -> np.ndarray:
        """(N, 2048) float32 pool3 features of NHWC images of one size (uint8, or float in [0, 1]).

        Batches of `batch_size` (fewer images: one batch of their number), the last one zero-padded."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise FIDInputError(f"images must be an (N, H, W, 3) array, got shape {images.shape}")
        if images.dtype != np.uint8:
            images = images.astype(np.float32)
        n = len(images)
        batch = max(1, min(self.batch_size, n))
        parts = [(i, self._dispatch(images[i : i + batch], batch)) for i in range(0, n, batch)]
        out = [np.asarray(p)[: min(batch, n - i)] for i, p in parts]
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)

    def features_of_files(
        self,
        files: Sequence[str | os.PathLike],
        *,
        num_workers: int | None = None,
        progress: bool = True,
        desc: str | None = None,
    ) -> np.ndarray:
        """(N, 2048) float32 features of image files, in the order given.

        Files are decoded on `num_workers` threads a few batches ahead of the device. Images are batched
        by size: a feature depends only on its own image, so each equals pytorch-fid's at batch size 1
        (pytorch-fid itself fails on mixed sizes at any larger batch); each new size compiles a small
        resize program. A list shorter than the batch size runs as one batch of its length, as there.
        """
        n = len(files)
        batch_size = max(1, min(self.batch_size, n))
        out = np.empty((n, FEATURE_DIM), np.float32)
        buckets: dict[tuple, list[tuple[int, np.ndarray]]] = {}
        in_flight: collections.deque = collections.deque()
        buffered = 0
        bar = tqdm(total=n, unit="img", desc=desc, disable=not progress, dynamic_ncols=True)

        def launch(shape):
            nonlocal buffered
            batch = buckets.pop(shape)
            buffered -= len(batch)
            in_flight.append(([i for i, _ in batch], self._dispatch(np.stack([img for _, img in batch]), batch_size)))
            while len(in_flight) > 1:  # keep one batch running while the host decodes the next
                collect()

        def collect():
            indices, feats = in_flight.popleft()
            out[indices] = np.asarray(feats)[: len(indices)]
            bar.update(len(indices))

        try:
            for i, img in _load_ahead(files, num_workers, ahead=2 * batch_size):
                buckets.setdefault(img.shape, []).append((i, img))
                buffered += 1
                if len(buckets[img.shape]) == batch_size:
                    launch(img.shape)
                elif buffered > 4 * batch_size:  # many sizes: bound the memory, run the oldest part-batch
                    launch(next(iter(buckets)))
            for shape in list(buckets):
                launch(shape)
            while in_flight:
                collect()
        finally:
            bar.close()
        return out


def load_image(path: str | os.PathLike) -> np.ndarray:
    """HWC uint8 RGB, as pytorch-fid decodes (Pillow, `convert("RGB")`)."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise FIDInputError(f"cannot read image {os.fspath(path)!r}: {e}") from None


def _load_ahead(files, num_workers, ahead):
    """Yields `(index, image)` in order, decoding at most `ahead` files in advance on a thread pool."""
    workers = num_workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        queue: collections.deque = collections.deque()
        todo = iter(enumerate(files))
        for i, f in todo:
            queue.append((i, pool.submit(load_image, f)))
            if len(queue) >= ahead:
                break
        while queue:
            i, future = queue.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                queue.append((nxt[0], pool.submit(load_image, nxt[1])))
            yield i, future.result()


# --- Files and statistics ---------------------------------------------------------------------------


def list_images(folder: str | os.PathLike) -> list[pathlib.Path]:
    """The folder's image files as pytorch-fid lists them: not recursive, the extension after the last
    dot in `IMAGE_EXTENSIONS` (case-sensitive, as its glob on Linux: `A.PNG` is skipped), sorted."""
    folder = pathlib.Path(folder)
    return sorted(
        p for p in folder.iterdir() if "." in p.name and p.name.rsplit(".", 1)[1] in IMAGE_EXTENSIONS and p.is_file()
    )


def _skipped_upper_case(folder: pathlib.Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.iterdir()
        if "." in p.name
        and p.is_file()
        and p.name.rsplit(".", 1)[1] not in IMAGE_EXTENSIONS
        and p.name.rsplit(".", 1)[1].lower() in IMAGE_EXTENSIONS
    )


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """`(mu, sigma)`: mean and covariance (`np.cov`, rowvar=False) of (N, D) features, in float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise FIDInputError(f"statistics need an (N, D) feature array with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def save_statistics(path: str | os.PathLike, mu, sigma) -> None:
    """Writes pytorch-fid's format: an `.npz` with exactly `mu` and `sigma`."""
    np.savez_compressed(os.fspath(path), mu=np.asarray(mu), sigma=np.asarray(sigma))


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """`(mu, sigma)` as float64 from an `.npz` with keys `mu` (D,) and `sigma` (D, D); checked."""
    path = os.fspath(path)
    try:
        with np.load(path) as f:  # allow_pickle stays False: an npz cannot run code here
            if not {"mu", "sigma"} <= set(f.files):
                raise FIDInputError(
                    f"{path!r} holds {sorted(f.files)}, but FID statistics need the arrays 'mu' "
                    "and 'sigma'; write them with --save-stats"
                )
            mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    except FIDInputError:
        raise
    except (OSError, ValueError) as e:
        raise FIDInputError(f"cannot read {path!r} as an .npz of FID statistics: {e}") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise FIDInputError(f"{path!r}: 'mu' must have shape (D,) and 'sigma' (D, D), got {mu.shape} and {sigma.shape}")
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2)), in float64.

    As pytorch-fid: if the square root of the product comes out non-finite (singular covariances, e.g.
    fewer images than dimensions), `eps` is added to both diagonals and it is taken again; an imaginary
    part left by rounding is dropped if the diagonal's is within 1e-3 of zero, else it is an error.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise FIDInputError(f"the two means have different lengths: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise FIDInputError(f"covariances {sigma1.shape} and {sigma2.shape} do not fit means of length {len(mu1)}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # handled just below
        root = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(root).all():
            print(
                f"FID: the covariance product is singular; retrying with {eps} added to both diagonals", file=sys.stderr
            )
            shift = eps * np.eye(len(sigma1))
            root = scipy.linalg.sqrtm((sigma1 + shift) @ (sigma2 + shift))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0.0, atol=1e-3):
            raise ValueError(
                f"the square root of the covariance product has an imaginary part of up to "
                f"{np.abs(root.imag).max():.3g}; the statistics are not valid covariances"
            )
        root = root.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root))


def folder_statistics(folder, extractor: FeatureExtractor, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """`(mu, sigma)` of a folder's images (see `list_images`)."""
    files = _folder_images(os.fspath(folder))
    return feature_statistics(extractor.features_of_files(files, **kwargs))


def _folder_images(folder: str) -> list[pathlib.Path]:
    files = list_images(folder)
    skipped = _skipped_upper_case(pathlib.Path(folder))
    if skipped:
        print(
            f"note: skipping {len(skipped)} file(s) in {folder!r} whose extension is not lower case "
            f"(e.g. {skipped[0]!r}), as pytorch-fid does on Linux; rename them to include them",
            file=sys.stderr,
        )
    if len(files) < 2:
        raise FIDInputError(
            f"folder {folder!r} has {len(files)} image file(s); FID's covariance needs at least 2 "
            f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return files


# --- Command line -----------------------------------------------------------------------------------


def _resolve(path: str):
    """('npz', (mu, sigma)) or ('folder', files), checked without touching the network."""
    if path.endswith(".npz"):
        if not os.path.isfile(path):
            raise FIDInputError(f"statistics file {path!r} does not exist")
        return "npz", load_statistics(path)
    if not os.path.exists(path):
        raise FIDInputError(f"path {path!r} does not exist; pass a folder of images or an .npz of statistics")
    if not os.path.isdir(path):
        raise FIDInputError(f"{path!r} is neither a folder of images nor an .npz of statistics")
    return "folder", _folder_images(path)


def _note_unofficial_weights(path: str) -> None:
    """pytorch-fid's file is named as torch.hub names files: `-6726825d` is the start of its SHA-256.
    Other weights run fine (the tests use random ones) but give scores no one else can compare with."""
    if not path.endswith(".pth"):
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    expected = FID_WEIGHTS_NAME.rsplit("-", 1)[1].split(".")[0]
    if not digest.hexdigest().startswith(expected):
        print(
            f"note: {path!r} is not pytorch-fid's {FID_WEIGHTS_NAME} (its SHA-256 begins "
            f"{digest.hexdigest()[:8]}, not {expected}); scores from it are not comparable with published FIDs",
            file=sys.stderr,
        )


def _run(args) -> None:
    if args.save_stats:
        src, dst = args.path
        if src.endswith(".npz"):
            raise FIDInputError(f"--save-stats reads a folder of images, got the statistics file {src!r}")
        if os.path.exists(dst):
            raise FIDInputError(f"--save-stats will not overwrite {dst!r}; remove it or choose another name")
        if not dst.endswith(".npz"):
            raise FIDInputError(f"--save-stats writes an .npz; name the output file '{dst}.npz'")
        if not os.path.isdir(os.path.dirname(os.path.abspath(dst))):
            raise FIDInputError(f"the folder of {dst!r} does not exist; create it first")
        paths = [src]
    else:
        paths = list(args.path)
    sources = [_resolve(p) for p in paths]
    dims = [len(value[0]) if kind == "npz" else FEATURE_DIM for kind, value in sources]
    if len(set(dims)) > 1:
        shown = ", ".join(f"{p!r}: {d}" for p, d in zip(paths, dims))
        raise FIDInputError(
            f"the two sides have different feature dimensions ({shown}); FID compares "
            f"{FEATURE_DIM}-d pool3 statistics on both sides"
        )

    extractor = None
    if any(kind == "folder" for kind, _ in sources):
        model, variables = load_fid_model(args.weights)  # the last check before anything compiles
        _note_unofficial_weights(args.weights)
        extractor = FeatureExtractor(model, variables, batch_size=args.batch_size)
    stats = []
    for path, (kind, value) in zip(paths, sources):
        if kind == "npz":
            stats.append(value)
        else:
            if len(value) <= FEATURE_DIM:
                print(
                    f"note: {len(value)} images in {path!r} give a covariance of rank < {FEATURE_DIM}; FID is biased "
                    "and unstable at that size (papers use 10,000-50,000 images)",
                    file=sys.stderr,
                )
            features = extractor.features_of_files(
                value, num_workers=args.num_workers, progress=not args.no_progress, desc=path
            )
            stats.append(feature_statistics(features))
    if args.save_stats:
        save_statistics(args.path[1], *stats[0])
        print(f"saved the statistics of {len(sources[0][1])} images in {paths[0]!r} to {args.path[1]!r}")
        return
    print(f"FID: {frechet_distance(*stats[0], *stats[1])}")


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="inception-fid",
        description="FID between two folders of images or .npz statistics files, as pytorch-fid computes it.",
    )
    parser.add_argument(
        "path",
        nargs=2,
        help="folders of images or .npz statistics (keys mu, sigma); with "
        "--save-stats: the folder, then the .npz to write",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help=f"pytorch-fid's {FID_WEIGHTS_NAME} (from {FID_WEIGHTS_URL}) or a .msgpack "
        "converted from it; not needed when both paths are .npz",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per network call")
    parser.add_argument("--save-stats", action="store_true", help="write the first path's statistics to the second")
    parser.add_argument("--num-workers", type=int, default=None, help="image-decoding threads (default: min(8, CPUs))")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        if args.batch_size < 1:
            raise FIDInputError(f"--batch-size must be at least 1, got {args.batch_size}")
        if args.num_workers is not None and args.num_workers < 1:
            raise FIDInputError(f"--num-workers must be at least 1, got {args.num_workers}")
        _run(args)
    except FIDInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

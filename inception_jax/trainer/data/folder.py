"""Image folders as datasets: `config.dataset.name = "folder:DIR"` (docs/training.md, "Your own images").

`scan` checks a folder of class subfolders before anything compiles, decoding every image once with the
pipeline's own decoder, so a bad folder is a one-line error and nothing fails mid-epoch. Each split is
then a random-access source like TFDS's (`[k]` -> {"image": bytes, "label": int}), which gives folders
the pipeline's global order, multi-host sharding and resume unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import tensorflow as tf

from inception_jax.trainer.data import preprocess

log = logging.getLogger(__name__)

PREFIX = "folder:"
# What tf.io.decode_image reads (TF >= 2.21); other files are ignored. Compared lower-case.
EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
CHANNELS = 3  # grayscale, RGBA and palette images all decode to RGB
HELD_OUT = ("val", "validation")  # DIR/train's evaluation folder, under either name
_SHOWN = 3  # files named in an error message; the rest are counted
CACHE_ENV = "INCEPTION_JAX_FOLDER_CACHE"  # where the scan caches its decoding results (see `cache_dir`)
_CACHE_VERSION = 1


class FolderError(ValueError):
    """A folder that cannot be a dataset; the one-line message names the field, the files and the fix."""


def is_folder(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


class Source:
    """One split as TFDS's random-access sources read: `len()`, and `[k]` -> {"image": bytes, "label": int}."""

    def __init__(self, root: str, files: list[tuple[str, int]]):
        self.paths = [os.path.join(root, f) for f, _ in files]
        self.labels = [label for _, label in files]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int) -> dict:
        with open(self.paths[k], "rb") as f:
            return {"image": f.read(), "label": self.labels[k]}


@dataclasses.dataclass(frozen=True)
class Folder:
    """A scanned folder: its classes (sorted folder names; label = index) and splits."""

    root: str  # absolute
    class_names: tuple[str, ...]
    splits: dict  # "train", "validation" and, with a DIR/test folder, "test" -> Source
    num_skipped: int  # bad images left out (skip_bad_images)

    def split(self, name: str, field: str) -> Source:
        """The split `name` of config.dataset.`field`: "train", "validation" (or "val"), or "test" (DIR/test
        when there is one, else the validation split)."""
        key = {"val": "validation"}.get(name, name)
        if key == "test" and "test" not in self.splits:
            key = "validation"
        if key not in self.splits:
            choices = "'train', 'validation' (or 'val'), 'test'"
            raise FolderError(
                f"config.dataset.{field}={name!r} is not a split of the image folder {self.root} ({choices}); "
                f"use --config.dataset.{field}={'train' if field == 'train_split' else 'validation'}."
            )
        return self.splits[key]


def path_of(name: str) -> str:
    return os.path.abspath(os.path.expanduser(name[len(PREFIX) :]))


_LOADED: dict[tuple, Folder] = {}


def load(name: str, *, val_fraction: float = 0.1, split_seed: int = 0, skip_bad_images: bool = False) -> Folder:
    """`scan`, once per process for the same folder and options (the trainer asks again for each iterator)."""
    key = (path_of(name), float(val_fraction), int(split_seed), bool(skip_bad_images))
    if key not in _LOADED:
        _LOADED[key] = scan(name, val_fraction=val_fraction, split_seed=split_seed, skip_bad_images=skip_bad_images)
    return _LOADED[key]


def scan(name: str, *, val_fraction: float = 0.1, split_seed: int = 0, skip_bad_images: bool = False) -> Folder:
    """Lists and checks the folder of `name` ("folder:DIR"); raises FolderError naming what is wrong.

    Layouts: `DIR/train/<class>/` with `DIR/val/<class>/` or `DIR/validation/<class>/` (and optionally
    `DIR/test/<class>/`); or `DIR/<class>/` (or `DIR/train/<class>/` alone), whose images are split per
    class into train and validation by `val_fraction`, seeded by `split_seed`.
    """
    root = path_of(name)
    what = f"config.dataset.name={name!r}"
    if not name[len(PREFIX) :].strip():
        raise FolderError(f"{what} names no folder; write the path after {PREFIX!r}, e.g. {PREFIX}/data/pets.")
    if not os.path.exists(root):
        raise FolderError(
            f"{what}: {root} does not exist; give the folder that holds one subfolder of images per class, "
            f"e.g. {PREFIX}/data/pets for /data/pets/cat/*.jpg and /data/pets/dog/*.jpg."
        )
    if not os.path.isdir(root):
        raise FolderError(f"{what}: {root} is a file, not a folder; give the folder of its class folders.")
    top = _subdirs(root)
    held = [d for d in HELD_OUT if d in top]
    if "train" in top and len(held) > 1:
        raise FolderError(f"{what}: {root} has both val/ and validation/; keep one (it is the evaluation split).")
    base = os.path.join(root, "train") if "train" in top else root
    classes = _subdirs(base)
    if len(classes) < 2:
        loose = len(_images(base, recursive=False))
        found = f"only one class folder, {classes[0]!r}" if classes else "no class folders"
        if loose:
            found += f", and {loose} image(s) directly in {base}"
        raise FolderError(
            f"{what}: {base} has {found}; a classifier needs at least 2 classes, one folder of images each "
            f"({base}/<class>/*.jpg), or DIR/train/<class>/ with DIR/val/<class>/."
        )
    train = {c: _images(os.path.join(base, c)) for c in classes}
    _check_not_empty(what, base, train, "hold no images")

    prefix = os.path.relpath(base, root)
    files = {}  # split -> [(path relative to root, label)]
    if held:
        files["train"] = _labelled(prefix, train, classes)
        files["validation"] = _held_out(what, root, held[0], classes)
    else:
        if not 0.0 < val_fraction < 1.0:
            raise FolderError(
                f"config.dataset.val_fraction={val_fraction} must be in (0, 1): the share of each class of "
                f"{base} held out for evaluation; e.g. 0.1."
            )
        files["train"], files["validation"] = _split(prefix, train, classes, val_fraction, split_seed)
    if "train" in top and "test" in top:
        files["test"] = _held_out(what, root, "test", classes)

    bad = _bad_images(root, sorted({f for part in files.values() for f, _ in part}))
    if bad:
        total = sum(len(part) for part in files.values())
        listed = ", ".join(f"{f} ({reason})" for f, reason in list(bad.items())[:_SHOWN])
        more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        if not skip_bad_images:
            raise FolderError(
                f"{what}: {len(bad)} of {total} images in {root} cannot be decoded: {listed}{more}; fix or "
                "delete them, or set --config.dataset.skip_bad_images=True to leave them out."
            )
        log.warning("%s: left out %d of %d images that cannot be decoded: %s%s", what, len(bad), total, listed, more)
        files = {k: [(f, label) for f, label in part if f not in bad] for k, part in files.items()}
        left = {c: [f for f, label in files["train"] if label == i] for i, c in enumerate(classes)}
        _check_not_empty(what, base, left, "have no decodable training images left")
    if not files["validation"]:
        raise FolderError(
            f"{what}: the validation split of {root} has no images; put some in its evaluation folder "
            "(DIR/val/<class>/), or give a class at least 2 images so that config.dataset.val_fraction can "
            "hold one out."
        )
    return Folder(
        root=root,
        class_names=tuple(classes),
        splits={k: Source(root, part) for k, part in files.items()},
        num_skipped=len(bad),
    )


# ---------------------------------------------------------------------------------------------- listing


def _subdirs(directory: str) -> list[str]:
    """Sorted names of the folders in `directory` (links followed), hidden ones (".x") left out."""
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def _images(directory: str, recursive: bool = True) -> list[str]:
    """Image files under `directory` (by extension; hidden files and folders left out) as sorted paths
    relative to it, with "/" separators."""
    found = []
    for here, dirs, names in os.walk(directory, onerror=_unlistable, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        rel = os.path.relpath(here, directory)
        for n in names:
            if not n.startswith(".") and os.path.splitext(n)[1].lower() in EXTENSIONS:
                found.append(n if rel == "." else f"{rel}/{n}".replace(os.sep, "/"))
    return sorted(found)


def _unlistable(error: OSError):
    raise FolderError(f"config.dataset.name: cannot list {error.filename} ({error.strerror}); make it readable.")


def _check_not_empty(what: str, base: str, by_class: dict, problem: str) -> None:
    empty = [c for c, found in by_class.items() if not found]
    if empty:
        names = ", ".join(map(repr, empty[:_SHOWN])) + (
            f" and {len(empty) - _SHOWN} more" if len(empty) > _SHOWN else ""
        )
        raise FolderError(
            f"{what}: {len(empty)} of {len(by_class)} class folders of {base} {problem} "
            f"({', '.join(EXTENSIONS)}): {names}; add images to them or delete them."
        )


def _labelled(prefix: str, by_class: dict, classes: list[str]) -> list[tuple[str, int]]:
    return [(_join(prefix, c, f), i) for i, c in enumerate(classes) for f in by_class.get(c, ())]


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p not in ("", "."))


def _held_out(what: str, root: str, folder: str, classes: list[str]) -> list[tuple[str, int]]:
    """DIR/`folder`'s images, labelled by DIR/train's classes (a class may be missing, not unknown)."""
    directory = os.path.join(root, folder)
    found = _subdirs(directory)
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise FolderError(
            f"{what}: {directory} has class folders that {root}/train lacks: "
            f"{', '.join(map(repr, unknown[:_SHOWN]))}{' ...' if len(unknown) > _SHOWN else ''}; the classes "
            "are train/'s folders, so rename or remove these (or add them to train/)."
        )
    return _labelled(folder, {c: _images(os.path.join(directory, c)) for c in found}, classes)


def _split(prefix: str, by_class: dict, classes: list[str], val_fraction: float, seed: int):
    """Stratified: each class with n >= 2 images holds out round(n * val_fraction) of them (at least 1,
    at most n - 1), those whose hash of (seed, path) is smallest. Depends on the file list and the seed
    only, so every process, and every restart, draws the same split."""
    train, val = [], []
    for i, c in enumerate(classes):
        files = [_join(prefix, c, f) for f in by_class[c]]
        n = len(files)
        n_val = min(max(round(n * val_fraction), 1), n - 1)
        held = set(sorted(files, key=lambda f: hashlib.blake2b(f"{seed}:{f}".encode(), digest_size=8).digest())[:n_val])
        train += [(f, i) for f in files if f not in held]
        val += [(f, i) for f in files if f in held]
    return train, val


# ---------------------------------------------------------------------------------------------- decoding


_VERDICTS: dict[str, tuple[int, int, str | None]] = {}  # absolute path -> (size, mtime_ns, error or None)


def _bad_images(root: str, files: list[str]) -> dict[str, str]:
    """{file: why} for the `files` (relative to `root`) that the pipeline's decoder rejects. Each file is
    decoded once: the verdicts are kept, per (size, modification time), in memory and in a cache file."""
    stats = {f: _stat(os.path.join(root, f)) for f in files}
    cache_file = _cache_file(root)
    if any(_VERDICTS.get(os.path.join(root, f), ())[:2] != stats[f] for f in files):
        for f, (size, mtime, error) in _read_cache(cache_file, root).items():
            _VERDICTS.setdefault(os.path.join(root, f), (size, mtime, error))
    todo = [f for f in files if _VERDICTS.get(os.path.join(root, f), ())[:2] != stats[f]]
    if todo:
        workers = min(32, len(os.sched_getaffinity(0)))
        if len(todo) >= 10_000:
            log.warning(
                "decoding %d images of %s once to check them (%d threads); cached in %s",
                len(todo),
                root,
                workers,
                cache_file,
            )
        with _native_stderr_silenced(), ThreadPoolExecutor(workers) as pool:
            errors = list(pool.map(lambda f: _decode_error(os.path.join(root, f)), todo))
        for f, error in zip(todo, errors):
            _VERDICTS[os.path.join(root, f)] = (*stats[f], error)
        _write_cache(cache_file, root, {f: _VERDICTS[os.path.join(root, f)] for f in files})
    return {f: _VERDICTS[os.path.join(root, f)][2] for f in files if _VERDICTS[os.path.join(root, f)][2] is not None}


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)  # unreadable: never matches a cached verdict, and `_decode_error` says why
    return (st.st_size, st.st_mtime_ns)


def _decode_error(path: str) -> str | None:
    """Why `preprocess.decode` (the pipeline's decoder, RGB) fails on the file, or None when it succeeds."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        preprocess.decode(tf.constant(data), CHANNELS)
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    except tf.errors.OpError as e:
        return _one_line(e.message)
    return None


def _one_line(message: str) -> str:
    message = re.sub(r"\{\{function_node [^}]*\}\}", "", message)
    message = re.sub(r"\[Op:\w+\].*", "", message, flags=re.S)
    return " ".join(message.split()).rstrip(".")


@contextlib.contextmanager
def _native_stderr_silenced():
    """libjpeg and TensorFlow's C++ logging print decode failures to file descriptor 2 themselves; the
    scan reports each failure in its own message instead."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cache_dir() -> str:
    """$INCEPTION_JAX_FOLDER_CACHE, else ~/.cache/inception_jax/folders (or under $XDG_CACHE_HOME)."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "inception_jax", "folders")


def _cache_file(root: str) -> str:
    return os.path.join(cache_dir(), hashlib.blake2b(root.encode(), digest_size=8).hexdigest() + ".json")


def _read_cache(path: str, root: str) -> dict[str, tuple]:
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return {}
    if saved.get("version") != _CACHE_VERSION or saved.get("root") != root or saved.get("tf") != tf.__version__:
        return {}  # another folder (a hash collision), or a decoder that may read other files
    return {f: tuple(v) for f, v in saved.get("files", {}).items()}


def _write_cache(path: str, root: str, verdicts: dict) -> None:
    """Best effort: a cache that cannot be written only means decoding again next time."""
    content = {"version": _CACHE_VERSION, "root": root, "tf": tf.__version__, "files": verdicts}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(content, f)
        os.replace(tmp, path)
    except OSError as e:
        log.info("could not write the folder scan cache %s: %s", path, e)

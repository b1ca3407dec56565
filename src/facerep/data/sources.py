"""Where pre-training images come from: synthetic faces, an image folder, an LMDB, or webdataset tars.

Every source yields RGB ``PIL.Image`` s (the transform comes later, see :mod:`facerep.data.loader`).
Map-style sources (:class:`SyntheticSource`, :class:`FolderSource`, :class:`LmdbSource`) expose
``len``, ``name(i)`` and ``load(i)``; :func:`load_item_with_fallback` replaces an unreadable item by the
next readable one and reports what it skipped. :class:`WebDatasetSource` streams raw tar samples.
Configuration mistakes (missing path, no images, unknown source) are one-line :class:`DataError` s.

Captions (image-text pre-training): ``caption(i)`` is item ``i``'s text or ``None``, and ``load_item(i)``
gives image and caption together. Synthetic faces are described from their ground truth
(:mod:`facerep.data.captions`); a folder image ``a/img_001.jpg`` has its caption in ``a/img_001.txt``;
an LMDB image ``key`` in the value of ``key.txt``; a webdataset sample in its ``txt`` member (UTF-8,
stripped; empty counts as missing).

Webdataset shards may live in S3-compatible object storage (``s3://bucket/prefix/{00000..00099}.tar``,
opened through fsspec + s3fs, the ``s3`` extra; endpoint and credentials from the standard ``AWS_*``
environment, ``data.storage_options`` for anything else). A transient error while a shard is read (a dropped
connection) reopens it, up to :data:`SHARD_RETRIES` times with doubling backoff, and skips the samples
already yielded from it, so none is lost or repeated; after that it is a one-line :class:`DataError`
naming the shard (docs/scaling-s3.md). :func:`load_item_with_fallback` applies ``data.missing_caption``:
``skip`` passes over an uncaptioned item like an unreadable one (reported as ``"<name> (no caption)"``),
``empty`` gives it the caption ``""``.

Untrusted input: folder files are read only when they are regular files (a named pipe would block, a link
to ``/dev/zero`` never end; see :mod:`facerep.runtime.untrusted`); :func:`safe_key` turns a key from a tar
(which may hold ``../``, ``/abs``, dots, any bytes) into one that is safe as a file name and a WebDataset
key.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import string
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
from PIL import Image
from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_iterator

from facerep.config import DataConfig
from facerep.data.captions import synthetic_caption
from facerep.data.synthetic import render_face
from facerep.data.transforms import BadImage, decode_image
from facerep.runtime.errors import FacerepError, one_line
from facerep.runtime.registry import Registry
from facerep.runtime.untrusted import NotRegularFile, as_int, read_json, read_regular

# Folder file extensions that count as images (compared lower-case).
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "ppm", "pgm", "gif"})
# Image members of a webdataset sample, in order of preference (img2dataset writes key.jpg).
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "gif")
# The synthetic "dataset" is fixed (like a real one): the run seed only drives order and augmentation.
SYNTHETIC_DATASET_SEED = 0
# Consecutive unreadable items after which a map-style source is declared unreadable.
MAX_CONSECUTIVE_BAD = 50
# Suffix of a skipped item's name when it was skipped for want of a caption (data.missing_caption=skip).
NO_CAPTION = " (no caption)"
# safe_key: bytes kept as they are (everything else is %XX), and the longest key before it is shortened.
KEY_CHARS = frozenset((string.ascii_letters + string.digits + "_-").encode())
MAX_KEY = 200


# Webdataset shard URL schemes opened through fsspec (s3fs) instead of webdataset's gopen.
FSSPEC_SCHEMES = ("s3", "s3a")
# A shard whose read fails transiently is reopened this many times, after RETRY_BACKOFF_S seconds, doubling.
SHARD_RETRIES = 3
RETRY_BACKOFF_S = 0.5
# Errors that say the shard is not there or not ours to read: reported at once, never retried.
PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# Libraries whose own exceptions (not OSError subclasses) mean a failed request or a broken response.
NETWORK_MODULES = frozenset({"botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "http", "s3fs"})


class DataError(FacerepError):
    """A data configuration problem (missing path, no images, unknown source); one line."""


def read_caption(data: bytes | None) -> str | None:
    """A stored caption: UTF-8 (undecodable bytes replaced), stripped; ``None`` if missing or empty."""
    text = bytes(data).decode("utf-8", "replace").strip() if data is not None else ""
    return text or None


def read_caption_file(path: str | os.PathLike) -> str | None:
    """The caption in text file ``path`` (see :func:`read_caption`); ``None`` if it is missing, unreadable
    or not a regular file."""
    try:
        return read_caption(read_regular(path))
    except (OSError, NotRegularFile):
        return None


class NotAnImageFile(BadImage):
    """An input path that is no regular file (a named pipe, a device, a socket); it is not opened."""


def read_image_file(path: str | os.PathLike, name: str) -> bytes:
    """The bytes of image file ``path``; :class:`BadImage` naming ``name`` if it cannot be read, and
    :class:`NotAnImageFile` if it is no regular file (a pipe, a device: never opened)."""
    try:
        return read_regular(path)
    except NotRegularFile as err:
        raise NotAnImageFile(name, str(err).removeprefix(f"{path}: ")) from err
    except OSError as err:
        raise BadImage(name, f"cannot read it ({one_line(err)})") from err


def safe_key(key: str) -> str:
    """``key`` made safe as a file name and a WebDataset key: bytes of its UTF-8 (surrogate-escaped) form
    other than ``A-Z a-z 0-9 _ -`` (and a leading ``-``, which tools read as an option) become ``%XX``, so
    no ``/``, ``..``, dot or odd character survives and distinct keys stay distinct
    (``urllib.parse.unquote_to_bytes`` gives the key back). A result over :data:`MAX_KEY` characters is cut
    and ends in ``~`` and 16 hex digits of the key's SHA-1 (``~`` is never escaped output, so it cannot
    collide with a short key).
    """
    raw = key.encode("utf-8", "surrogateescape")
    out = "".join(
        chr(b) if b in KEY_CHARS and (i or b != ord("-")) else f"%{b:02X}" for i, b in enumerate(raw)
    )
    if len(out) > MAX_KEY:
        out = f"{out[: MAX_KEY - 17]}~{hashlib.sha1(raw).hexdigest()[:16]}"
    return out


class MapSource:
    """A finite, indexable set of images: ``len(src)``, ``src.name(i)``, ``src.load(i)``, and captions:
    ``src.caption(i)``, ``src.load_item(i)``."""

    where = "?"  # what the items are read from (a path, or "synthetic"), for messages
    captions_from = "nowhere (this source has no captions)"  # where captions are looked for, for messages

    def __len__(self) -> int:
        raise NotImplementedError

    def name(self, index: int) -> str:
        """Human-readable name of item ``index`` (used in skip reports)."""
        raise NotImplementedError

    def load(self, index: int) -> Image.Image:
        """Item ``index`` as a loaded RGB image; raises :class:`BadImage` if unreadable."""
        raise NotImplementedError

    def caption(self, index: int) -> str | None:
        """The caption of item ``index``, ``None`` if it has none."""
        return None

    def load_item(self, index: int) -> tuple[Image.Image, str | None]:
        """``(load(index), caption(index))``; sources that can read both at once override it."""
        return self.load(index), self.caption(index)


class SyntheticSource(MapSource):
    """Procedurally rendered faces: item ``i`` is ``render_face(seed, i, size).image``, its caption
    ``synthetic_caption(face, seed, i)`` (independent of ``size``)."""

    captions_from = "the generator's ground truth"
    CAPTION_RENDER_SIZE = 16  # caption(i) alone renders this small: captions depend on parameters only

    def __init__(self, length: int, size: int, seed: int = 0) -> None:
        if length <= 0:
            raise DataError(f"synthetic source: data.synthetic_length must be positive, got {length}")
        if size <= 0:
            raise DataError(f"synthetic source: render size must be positive, got {size}")
        self.length, self.size, self.seed = int(length), int(size), int(seed)
        self.where = "synthetic"

    def __len__(self) -> int:
        return self.length

    def name(self, index: int) -> str:
        return f"synthetic:{index}"

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(render_face(self.seed, index, size=self.size).image, mode="RGB")

    def caption(self, index: int) -> str:
        face = render_face(self.seed, index, size=self.CAPTION_RENDER_SIZE)
        return synthetic_caption(face, self.seed, index)

    def load_item(self, index: int) -> tuple[Image.Image, str]:
        face = render_face(self.seed, index, size=self.size)  # rendered once for both
        return Image.fromarray(face.image, mode="RGB"), synthetic_caption(face, self.seed, index)


def list_image_files(root: Path) -> list[str]:
    """Image files under ``root`` (recursive, symlinks followed once), as sorted relative POSIX paths."""
    found: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # symlink cycle
            dirnames[:] = []
            continue
        seen.add(real)
        rel_dir = Path(dirpath).relative_to(root)
        for fname in filenames:
            if fname.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS and "." in fname:
                found.append((rel_dir / fname).as_posix())
    return sorted(found)


class FolderSource(MapSource):
    """Every image file under a folder, recursively, in sorted relative-path order; the caption of
    ``a/img_001.jpg`` is the text file ``a/img_001.txt`` beside it."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.where = str(self.root)
        self.captions_from = f"<image stem>.txt files beside the images under {self.root}"
        if not self.root.exists():
            raise DataError(f"folder source: path not found: {self.root} (expected a folder of images)")
        if not self.root.is_dir():
            raise DataError(f"folder source: {self.root} is not a folder (expected a folder of images)")
        self.files = list_image_files(self.root)
        if not self.files:
            exts = ",".join(sorted(IMAGE_EXTENSIONS))
            raise DataError(f"folder source: no image files ({exts}) under {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        return self.files[index]

    def load(self, index: int) -> Image.Image:
        name = self.files[index]
        return decode_image(read_image_file(self.root / name, name), name)

    def caption(self, index: int) -> str | None:
        return read_caption_file((self.root / self.files[index]).with_suffix(".txt"))


_LMDB_ENVS: dict[str, tuple[int, Any]] = {}  # realpath -> (pid, env): one env per db per process


def _open_lmdb(path: Path) -> Any:
    """This process's read-only environment for ``path`` (py-lmdb allows one per path per process)."""
    real = os.path.realpath(path)
    pid_env = _LMDB_ENVS.get(real)
    if pid_env is not None:
        if pid_env[0] == os.getpid():
            return pid_env[1]
        # Inherited through fork: unusable here, and py-lmdb refuses a second open of the path until it
        # is closed (closing only drops this process's mapping; there is no lock file with lock=False).
        with contextlib.suppress(Exception):
            pid_env[1].close()
    env = lmdb.open(
        real, subdir=os.path.isdir(real), readonly=True, lock=False, readahead=False, meminit=False
    )
    _LMDB_ENVS[real] = (os.getpid(), env)
    return env


class LmdbSource(MapSource):
    """The reference MCF LMDB layout: key ``b"length"`` = image count (ASCII int), a key-list file
    (line ``i`` = key of image ``i``; its value = encoded image bytes).

    The key file is ``keys_file`` or ``<path>/keys.txt``; without one, the db's own keys (sorted,
    minus ``length`` and caption keys ``*.txt``) are used. Image ``key``'s caption is the value of
    ``key.txt``. Each process opens (and caches) its own read-only environment on
    first use, so the source can be forked or pickled into DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike, keys_file: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self.captions_from = f"keys '<image key>.txt' in {self.path}"
        if not self.path.exists():
            raise DataError(f"lmdb source: path not found: {self.path} (expected an LMDB environment)")
        try:
            env = _open_lmdb(self.path)
        except Exception as err:
            raise DataError(f"lmdb source: cannot open {self.path} as an LMDB environment ({err})") from err
        with env.begin() as txn:
            raw_length = txn.get(b"length")
            key_path = Path(keys_file) if keys_file else self.path / "keys.txt"
            if keys_file and not key_path.is_file():
                raise DataError(f"lmdb source: key file not found: {key_path}")
            if key_path.is_file():
                lines = key_path.read_text(encoding="utf-8").splitlines()
                self.keys = [line.strip() for line in lines if line.strip()]
            else:
                self.keys = [k.decode("utf-8", "replace") for k in txn.cursor().iternext(values=False)]
                self.keys = sorted(k for k in self.keys if k != "length" and not k.endswith(".txt"))
        if raw_length is not None:
            try:
                length = int(bytes(raw_length).decode("ascii").strip())
            except ValueError as err:
                raise DataError(f"lmdb source: key 'length' in {self.path} is not an integer") from err
            if length != len(self.keys):
                raise DataError(
                    f"lmdb source: {self.path} says length={length} "
                    f"but its key list has {len(self.keys)} keys"
                )
        if not self.keys:
            raise DataError(f"lmdb source: no image keys in {self.path} (expected keys.txt or image entries)")

    def __len__(self) -> int:
        return len(self.keys)

    def name(self, index: int) -> str:
        return self.keys[index]

    def load(self, index: int) -> Image.Image:
        return self.load_item(index, caption=False)[0]

    def caption(self, index: int) -> str | None:
        with _open_lmdb(self.path).begin(buffers=False) as txn:
            return read_caption(txn.get(f"{self.keys[index]}.txt".encode()))

    def load_item(self, index: int, caption: bool = True) -> tuple[Image.Image, str | None]:
        """Image and caption read in one transaction (``caption=False``: the image only)."""
        key = self.keys[index]
        with _open_lmdb(self.path).begin(buffers=False) as txn:
            value = txn.get(key.encode("utf-8"))
            text = read_caption(txn.get(f"{key}.txt".encode())) if caption else None
        if value is None:
            raise BadImage(key, "key not found in the lmdb")
        return decode_image(value, key), text


def load_item_with_fallback(
    source: MapSource, index: int, missing_caption: str | None
) -> tuple[Image.Image, str | None, int, list[str]]:
    """Load item ``index``, or the next readable one (``index+1, index+2, ...`` mod ``len``), with its
    caption: ``(image, caption, index actually loaded, names of the items passed over)``. Raises
    :class:`DataError` after :data:`MAX_CONSECUTIVE_BAD` consecutive failures (or all items).

    ``missing_caption=None`` reads no captions (the caption is ``None``); ``"skip"`` passes over an
    item without one like an unreadable one, naming it ``"<name> (no caption)"``; ``"empty"`` gives it
    ``""``. A run of :data:`MAX_CONSECUTIVE_BAD` uncaptioned items is a :class:`DataError` that says
    where captions are looked for.
    """
    n = len(source)
    skipped: list[str] = []
    last, uncaptioned = "", 0
    for step in range(min(MAX_CONSECUTIVE_BAD, n)):
        i = (index + step) % n
        try:
            if missing_caption is None:
                return source.load(i), None, i, skipped
            img, caption = source.load_item(i)
        except BadImage as err:
            skipped.append(err.name)
            last = err.reason
            continue
        except Exception as err:
            skipped.append(source.name(i))
            last = one_line(f"{type(err).__name__}: {err}")
            continue
        if caption is not None or missing_caption != "skip":
            return img, caption or "", i, skipped
        skipped.append(source.name(i) + NO_CAPTION)
        uncaptioned += 1
    first = source.name(index % n)
    if uncaptioned == len(skipped):
        raise DataError(
            f"{source.where}: {uncaptioned} consecutive images without a caption from {first} on; captions "
            f'are read from {source.captions_from} (data.missing_caption=empty uses "" instead)'
        )
    also = f", {uncaptioned} more without a caption" if uncaptioned else ""
    raise DataError(
        f"{source.where}: {len(skipped) - uncaptioned} consecutive unreadable images from {first} on"
        f"{also} (last: {last}); the data looks unreadable"
    )


def _is_remote(url: str) -> bool:
    return ("://" in url and not url.startswith("file://")) or url.startswith("pipe:")


def _local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def is_transient(err: BaseException) -> bool:
    """Whether a shard read error may go away on a retry: a connection or timeout error, another
    ``OSError`` but a missing file or a denied access, or an error of the network libraries
    (botocore, aiohttp, urllib3, ``http.client.IncompleteRead``)."""
    if isinstance(err, PERMANENT_OS_ERRORS):
        return False
    if isinstance(err, OSError):  # ConnectionError, TimeoutError, EIO, ...
        return True
    return type(err).__module__.split(".", 1)[0] in NETWORK_MODULES


def open_shard(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    """A readable binary stream of shard ``url``: ``s3://`` (and ``s3a://``) through fsspec + s3fs with
    ``storage_options`` (endpoint and credentials otherwise from the ``AWS_*`` environment), anything else
    through webdataset's ``gopen`` (local paths, ``http(s)://``, ``pipe:``)."""
    if _scheme(url) in FSSPEC_SCHEMES:
        import fsspec  # only for object storage: s3fs pulls in aiobotocore

        if _scheme(url) == "s3a":
            url = "s3" + url[3:]
        return fsspec.open(url, "rb", **(storage_options or {})).open()
    return gopen(url)


class _Transient(Exception):
    """A transient read error of one shard, carried out of webdataset's iterators to the retry loop."""

    def __init__(self, err: BaseException) -> None:
        super().__init__(one_line(f"{type(err).__name__}: {err}"))
        self.err = err


class WebDatasetSource:
    """Tar shards in the webdataset / img2dataset layout (``key.jpg`` + ``key.txt`` + ``key.json``);
    a sample's caption is its ``txt`` member.

    ``pattern`` uses brace syntax (``data/{00000..00009}.tar``), ``::`` separates several patterns;
    shards may be local paths, ``s3://`` objects (fsspec + s3fs, ``storage_options`` passed on; no bucket
    listing: the pattern names the shards) or anything webdataset's ``gopen`` opens (``http(s)://``,
    ``pipe:``). Local shards are checked to exist up front. A transient read error is retried
    ``retries`` times (see :meth:`shard_samples`).
    """

    def __init__(
        self,
        pattern: str,
        storage_options: dict[str, Any] | None = None,
        *,
        retries: int = SHARD_RETRIES,
        backoff: float = RETRY_BACKOFF_S,
    ) -> None:
        self.pattern = pattern
        self.storage_options = dict(storage_options or {})
        self.retries, self.backoff = int(retries), float(backoff)
        self.captions_from = f"the 'txt' member (<key>.txt) of each sample in {pattern}"
        self.shards: list[str] = [s for s in expand_urls(pattern) if s]
        if not self.shards:
            raise DataError(f"webdataset source: pattern {pattern!r} expands to no shards")
        missing = [s for s in self.shards if not _is_remote(s) and not os.path.isfile(_local_path(s))]
        if missing:
            raise DataError(
                f"webdataset source: shard not found: {missing[0]} ({len(missing)} of {len(self.shards)} "
                f"shards of {pattern!r} missing; expected .tar files)"
            )
        if any(_scheme(s) in FSSPEC_SCHEMES for s in self.shards):
            try:
                import fsspec  # noqa: F401
                import s3fs  # noqa: F401
            except ImportError as err:
                raise DataError(
                    f"webdataset source: {pattern!r} is in object storage, which needs fsspec and s3fs "
                    f"(pip install 'facerep[s3]'; {one_line(err)})"
                ) from None

    def shard_samples(self, url: str, on_error: Callable[[str], None]) -> Iterator[dict[str, Any]]:
        """Raw samples of one shard: dicts ``{"__key__", "__url__", ext: bytes, ...}`` (not decoded).

        An unreadable shard or member is reported through ``on_error(name)`` and skipped. A transient
        error (:func:`is_transient`: a dropped connection, a timeout) while opening or reading reopens the
        shard after ``backoff``, ``2 * backoff``, ... seconds (one line on stderr each time) and skips the
        samples already yielded from it; after ``retries`` retries it is a one-line :class:`DataError`
        naming the shard.
        """
        done = failures = 0
        while True:
            try:
                with contextlib.closing(self._read_shard(url, on_error)) as attempt:
                    for i, sample in enumerate(attempt):
                        if i >= done:
                            done += 1
                            yield sample
                return
            except _Transient as failure:
                failures += 1
                if failures > self.retries:
                    raise DataError(
                        f"webdataset source: cannot read shard {url}: {failure} (after {self.retries} "
                        f"retries, {done} samples in)"
                    ) from None
                wait = self.backoff * 2 ** (failures - 1)
                print(
                    f"[facerep] data: {url}: {failure}; reopening it in {wait:g} s (retry {failures} of "
                    f"{self.retries}, skipping the {done} samples already read)",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(wait)

    def _read_shard(self, url: str, on_error: Callable[[str], None]) -> Iterator[dict[str, Any]]:
        """One attempt at :meth:`shard_samples`: transient errors leave as :class:`_Transient`."""

        def handler(exn: Exception) -> bool:
            if isinstance(exn, _Transient):
                raise exn
            if is_transient(exn):
                raise _Transient(exn) from exn
            on_error(f"{url}: {one_line(exn.args[0] if exn.args else exn)}")
            return True

        try:
            stream = open_shard(url, self.storage_options)
        except Exception as err:
            handler(err)
            return
        failed = False
        try:
            files = ({**f, "__url__": url} for f in tar_file_iterator(stream, handler=handler))
            yield from group_by_keys(files, handler=handler)
        except Exception as err:  # a broken tar stream ends the shard, not the run
            failed = True
            handler(err)
        finally:
            try:
                stream.close()
            except Exception as err:
                if not failed:  # after a failed read, closing may fail too: said already
                    on_error(f"{url}: {one_line(err.args[0] if err.args else err)}")

    @staticmethod
    def sample_name(sample: dict[str, Any]) -> str:
        return f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"

    @staticmethod
    def image_bytes(sample: dict[str, Any]) -> bytes:
        """The sample's encoded image (first of :data:`WDS_IMAGE_EXTENSIONS` present).

        Raises :class:`BadImage` when there is none or it is empty (checks that need no decoding).
        """
        for ext in WDS_IMAGE_EXTENSIONS:
            if ext in sample:
                data = sample[ext]
                if not data:
                    raise BadImage(WebDatasetSource.sample_name(sample), f"empty {ext} member")
                return data
        raise BadImage(WebDatasetSource.sample_name(sample), "sample has no image member")

    @staticmethod
    def caption(sample: dict[str, Any]) -> str | None:
        """The sample's ``txt`` member as text; ``None`` if missing or empty."""
        return read_caption(sample.get("txt"))

    @staticmethod
    def decode(sample: dict[str, Any]) -> Image.Image:
        return decode_image(WebDatasetSource.image_bytes(sample), WebDatasetSource.sample_name(sample))

    def local_length(self) -> int | None:
        """Total samples from img2dataset's ``<shard>_stats.json`` files ("successes"), if all exist."""
        total = 0
        for shard in self.shards:
            if _is_remote(shard):
                return None
            stats = Path(_local_path(shard)).with_suffix("")
            stats = stats.with_name(stats.name + "_stats.json")
            try:
                total += as_int(read_json(stats, DataError)["successes"], f"{stats}: successes", DataError, 0)
            except (DataError, KeyError, TypeError):
                return None
        return total


def _path(cfg: DataConfig) -> str:
    if not cfg.path:
        raise DataError(f"data.source={cfg.source} needs data.path (got none)")
    return cfg.path


SOURCES: Registry[Callable[[DataConfig], MapSource | WebDatasetSource]] = Registry("data.source", DataError)
SOURCES.add(
    "synthetic",
    lambda cfg: SyntheticSource(
        cfg.synthetic_length, cfg.synthetic_render_size or cfg.image_size, seed=SYNTHETIC_DATASET_SEED
    ),
)
SOURCES.add("folder", lambda cfg: FolderSource(_path(cfg)))
SOURCES.add("lmdb", lambda cfg: LmdbSource(_path(cfg), cfg.lmdb_keys))
SOURCES.add("webdataset", lambda cfg: WebDatasetSource(_path(cfg), cfg.storage_options))


def build_source(cfg: DataConfig) -> MapSource | WebDatasetSource:
    """The source ``cfg.source`` names; :class:`DataError` for an unknown source or a bad path."""
    return SOURCES.get(cfg.source)(cfg)

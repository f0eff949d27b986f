"""Saving and loading trained models as ``.npz`` files (no pickle).

Every model file holds plain arrays plus two fields: ``model_type`` (a registered class name) and
``format_version``. :func:`load` reads ``model_type`` and hands the arrays to the class registered
for it with :func:`register_model`; a model class provides ``_to_arrays() -> dict`` and the class
method ``_from_arrays(arrays) -> model``, and its ``save(path)`` calls :func:`save_arrays`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["FORMAT_VERSION", "load", "register_model", "save_arrays"]

#: Version of the file layout written by this release; files with a higher version are refused.
FORMAT_VERSION = 1


_REGISTRY: dict[str, type] = {}


def register_model(type_name: str, cls: type) -> None:
    """Register ``cls`` as the class that :func:`load` builds for files of ``type_name``.

    Parameters
    ----------
    type_name : str
        The ``model_type`` written into the file (e.g. ``"WALS"``).
    cls : type
        A class with a class method ``_from_arrays(arrays: Mapping[str, numpy.ndarray])``.
    """
    if not isinstance(type_name, str) or not type_name:
        raise ValueError(f"type_name: expected a non-empty string, got {type_name!r}")
    if not callable(getattr(cls, "_from_arrays", None)):
        raise TypeError(f"cls: {cls!r} has no class method _from_arrays(arrays)")
    _REGISTRY[type_name] = cls


def save_arrays(path: str | os.PathLike, model_type: str, arrays: Mapping[str, Any]) -> None:
    """Write ``arrays`` plus ``model_type`` and ``format_version`` to the ``.npz`` file ``path``.

    The file is written atomically: to a temporary file in the same folder, then renamed over
    ``path`` (an existing file is replaced only once the new one is complete). ``path`` is used
    exactly as given (no ``.npz`` suffix is added). Values must be numeric or string arrays
    (anything needing pickle is refused).

    Raises
    ------
    ValueError
        If ``model_type`` is not registered or an array has dtype object.
    """
    if model_type not in _REGISTRY:
        raise ValueError(f"model_type: {model_type!r} is not registered (see register_model)")
    payload = {name: np.asarray(value) for name, value in arrays.items()}
    for name, value in payload.items():
        if value.dtype.hasobject:
            raise ValueError(f"{name}: cannot save an object array without pickle")
    payload["model_type"] = np.array(model_type)
    payload["format_version"] = np.array(FORMAT_VERSION, dtype=np.int64)
    path = Path(os.fspath(path))
    with atomic_file(path) as f:
        np.savez(f, **payload)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` only once the block completes: written to a
    temporary file in the same folder, flushed to disk, given the umask's permissions and
    renamed over ``path``. On an exception (or KeyboardInterrupt) the temporary file is removed
    and ``path`` is left as it was."""
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it 0600; follow the umask
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    """The process's file-creation mask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def load(path: str | os.PathLike) -> Any:
    """Load a model saved with its ``save(path)`` method.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npz`` file written by ``save`` (read with ``allow_pickle=False``).

    Returns
    -------
    The model, an instance of the class registered for the file's ``model_type``
    (e.g. :class:`fastsoftmax.WALS`).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Naming the file, if it is not a fastsoftmax model (not a ``.npz``, truncated, corrupted,
        a field missing or malformed), its ``model_type`` is unknown, or it was written by a newer
        format version. Nothing is ever unpickled.
    """
    name = os.fspath(path)
    try:
        f = open(name, "rb")  # closed by the with below
    except IsADirectoryError as e:
        raise ValueError(f"path: {name!r} is a folder, expected a .npz model file") from e
    with f:  # np.load leaves its own file open when the file is not a valid archive
        try:
            npz = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            # (numpy's own message for a non-archive suggests allow_pickle: not a way out here)
            raise ValueError(
                f"path: {name!r} is not a fastsoftmax model file (not a .npz archive)"
            ) from e
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"path: {name!r} is a .npy file, expected a .npz model file")
        try:
            with npz:
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            # truncated or corrupted member (zip CRC / length mismatch), or a pickled object array
            raise ValueError(f"path: {name!r} is truncated or corrupted ({e})") from e
    if "model_type" not in arrays or "format_version" not in arrays:
        raise ValueError(
            f"path: {name!r} is not a fastsoftmax model file (no model_type / format_version field)"
        )
    model_type_field = arrays.pop("model_type")
    version_field = arrays.pop("format_version")
    if model_type_field.shape != () or model_type_field.dtype.kind != "U":
        raise ValueError(f"path: {name!r} has a malformed model_type field")
    if version_field.shape != () or version_field.dtype.kind not in "iu":
        raise ValueError(f"path: {name!r} has a malformed format_version field")
    model_type = str(model_type_field)
    version = int(version_field)
    if version > FORMAT_VERSION:
        raise ValueError(
            f"path: {name!r} has format_version {version}, newer than this fastsoftmax supports "
            f"({FORMAT_VERSION}); upgrade fastsoftmax"
        )
    if version < 1:
        raise ValueError(f"path: {name!r} has an invalid format_version {version}")
    cls = _REGISTRY.get(model_type)
    if cls is None:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ValueError(
            f"path: {name!r} has unknown model_type {model_type!r} (registered: {known})"
        )
    try:
        return cls._from_arrays(arrays)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        # a missing or malformed field: name the file whatever the class's own message says
        raise ValueError(f"path: {name!r} is not a valid {model_type} model file ({e})") from e

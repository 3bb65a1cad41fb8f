"""Where the project's datasets are looked for: ``$MAMBAGLUE_DATA``, else ``shared/data`` beside the checkout.

The training configs name their photo folders as ``$MAMBAGLUE_DATA/photos/train``; the tests, ``eval-pose`` and
``scripts/results.sh`` use the same root, so one variable moves all of them to another copy of the data.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

DATA_VARIABLE = "MAMBAGLUE_DATA"
# $MAMBAGLUE_DATA or ${MAMBAGLUE_DATA}, not the start of a longer name ($MAMBAGLUE_DATA_X)
_VARIABLE = re.compile(r"\$\{" + DATA_VARIABLE + r"\}|\$" + DATA_VARIABLE + r"(?![A-Za-z0-9_])")


def data_root() -> Path:
    """``$MAMBAGLUE_DATA`` when set, else ``<checkout>/../shared/data`` (whether or not it exists)."""
    value = os.environ.get(DATA_VARIABLE)
    if value:
        return Path(os.path.abspath(os.path.expanduser(value)))
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def expand_data_path(path: str | os.PathLike) -> str:
    """A config path with ``$MAMBAGLUE_DATA`` (or ``${MAMBAGLUE_DATA}``) replaced by ``data_root()`` and ``~``
    expanded, made absolute against the working directory and normalised (no ``..``; symlinks are kept): the
    form training records and keys its feature caches by."""
    text = _VARIABLE.sub(lambda _: str(data_root()), str(path))  # (a function's return is not read for escapes)
    return os.path.abspath(os.path.expanduser(text))

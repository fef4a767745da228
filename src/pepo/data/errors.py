"""The one error type of the data layer, and the path rule every reader shares."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DataError", "safe_join"]


class DataError(ValueError):
    """A dataset file or row that cannot be used; the message names the file, line/row, id and field."""


def safe_join(root: Path, relative: str, where: str) -> Path:
    """``root / relative``, refusing a path that leaves ``root`` (``../`` or an absolute path in a data file)."""
    root = Path(root).resolve()
    path = (root / relative).resolve()
    if os.path.commonpath([root, path]) != str(root):
        raise DataError(f"{where}: image path {relative!r} escapes image_root {root} (its folder); refusing to read it.")
    return path

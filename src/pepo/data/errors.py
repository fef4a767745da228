"""The one error type of the data layer, and the path rule every reader shares."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DataError", "safe_join"]


class DataError(ValueError):
    """A dataset file or row that cannot be used; the message names the file, line/row, id and field."""


def safe_join(root: Path, relative: str, where: str) -> Path:
    """``root / relative``, refusing a path that leaves ``root`` (``../`` or an absolute path in a data file)."""
    # Normalised, not resolved: `..` in a data file is refused, a symlink the user put under the root is followed.
    root = Path(os.path.abspath(root))
    path = Path(os.path.abspath(root / relative))
    if os.path.commonpath([root, path]) != str(root):
        raise DataError(f"{where}: image path {relative!r} escapes image_root {root} (its folder); refusing to read it.")
    return path

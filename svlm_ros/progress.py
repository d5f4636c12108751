"""Progress bars for long work: on a terminal only, so logs and pipes stay clean."""
from __future__ import annotations

import sys
from typing import Iterable, Optional

from tqdm import tqdm


def progress(iterable: Optional[Iterable] = None, **kwargs) -> tqdm:
    """A tqdm bar with ETA on stderr when it is a terminal; silent otherwise."""
    kwargs.setdefault("disable", not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, **kwargs)

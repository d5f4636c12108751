"""The `python -m training.<tool>` entry point the tools share: their flags, logging to stderr, and
an expected failure (a missing file, a bad value) as one line naming the tool, with exit status 2."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence, Tuple, Type

EXPECTED: Tuple[Type[BaseException], ...] = (FileNotFoundError, FileExistsError, ValueError)


def main(prog: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
         run: Callable[[argparse.Namespace], int], argv: Optional[Sequence[str]] = None,
         expected: Tuple[Type[BaseException], ...] = EXPECTED, name: str = "") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--log-level", default="INFO")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except expected as error:
        print(f"{name or prog}: {error}", file=sys.stderr)
        return 2

"""Point the ros-jazzy wheels' CMake export files at this interpreter's include dirs.

The wheels were built on a machine whose Python lived under /opt/python/cp311-cp311; their
CMake files name include paths there, which CMake refuses as non-existent.
"""
import pathlib
import sys
import sysconfig

import numpy

BUILD_MACHINE_PYTHON = "/opt/python/cp311-cp311/include/python3.11"
BUILD_MACHINE_NUMPY = "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"


def main(venv: str) -> None:
    replacements = {
        BUILD_MACHINE_NUMPY: numpy.get_include(),
        BUILD_MACHINE_PYTHON: sysconfig.get_paths()["include"],
    }
    changed = 0
    for path in pathlib.Path(venv, "share").glob("*/cmake/*.cmake"):
        text = path.read_text()
        new = text
        for old, current in replacements.items():
            new = new.replace(old, current)
        if new != text:
            path.write_text(new)
            changed += 1
    print(f"rewrote {changed} CMake files", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])

"""Make a colcon-built svlm_ros's generated interfaces importable from a venv, with no `source`.

Shared libraries go to $VENV/lib, which the ros-jazzy wheels' bootstrapper already puts on
LD_LIBRARY_PATH; the generated Python modules (svlm_ros.msg, svlm_ros.srv and their
typesupport extensions) go to $VENV/lib/svlm_ros_interfaces/svlm_ros, a directory that a .pth
file puts on sys.path so that svlm_ros/__init__.py's extend_path() finds them beside the sources.
"""
import pathlib
import shutil
import sys
import sysconfig

PACKAGE = "svlm_ros"


def main(install_prefix: str, venv: str) -> None:
    prefix = pathlib.Path(install_prefix)
    venv_path = pathlib.Path(venv).resolve()
    for library in (prefix / "lib").glob("lib*.so"):
        shutil.copy2(library, venv_path / "lib" / library.name)

    generated = next((prefix / "lib").glob(f"python3*/site-packages/{PACKAGE}"))
    target_root = venv_path / "lib" / f"{PACKAGE}_interfaces"
    target = target_root / PACKAGE
    shutil.rmtree(target_root, ignore_errors=True)
    target.mkdir(parents=True)
    for subpackage in ("msg", "srv"):
        shutil.copytree(generated / subpackage, target / subpackage,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for extension in generated.glob(f"{PACKAGE}_s__*.so"):
        shutil.copy2(extension, target / extension.name)

    site_packages = pathlib.Path(sysconfig.get_paths()["purelib"])
    (site_packages / f"{PACKAGE}_interfaces.pth").write_text(f"{target_root}\n")
    print(f"installed generated interfaces into {target_root}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

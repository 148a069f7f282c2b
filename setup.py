"""pip install --no-build-isolation .

Drives the project's one CMake build (CMakeLists.txt) into ./build (or
$ROTARY_ATTENTION_BUILD_DIR), then packages python/rotary_attention with the
compiled _C module and librotary_attention next to it. Build isolation would
download a fresh torch: pass --no-build-isolation so the build uses the torch
already installed, which is also the one the extension is linked against.
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import torch

        build_dir = os.environ.get("ROTARY_ATTENTION_BUILD_DIR", os.path.join(ROOT, "build"))
        configure = [
            "cmake", "-S", ROOT, "-B", build_dir, "-G", "Ninja",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            "-DRA_BUILD_PYTHON=ON",
        ]
        if shutil.which("ccache"):
            configure += ["-DCMAKE_CXX_COMPILER_LAUNCHER=ccache", "-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache"]
        subprocess.check_call(configure)
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "rotary_attention_python"])

        package_dir = os.path.dirname(self.get_ext_fullpath(ext.name))
        os.makedirs(package_dir, exist_ok=True)
        built = glob.glob(os.path.join(build_dir, "python", "rotary_attention", "_C*.so"))
        if len(built) != 1:
            raise RuntimeError(f"expected one _C module in {build_dir}, found {built}")
        shutil.copy2(built[0], self.get_ext_fullpath(ext.name))
        # _C finds the library through RPATH $ORIGIN (the soname file).
        for lib in glob.glob(os.path.join(build_dir, "librotary_attention.so.*")):
            if not os.path.islink(lib) and lib.count(".so.") == 1:
                soname = "librotary_attention.so." + lib.split(".so.")[1].split(".")[0]
                shutil.copy2(lib, os.path.join(package_dir, soname))


setup(
    name="rotary_attention",
    version="0.1.0",
    description="LibTorch rotary attention layers with a CPU/CUDA rotary operator",
    packages=["rotary_attention"],
    package_dir={"": "python"},
    ext_modules=[CMakeExtension("rotary_attention._C")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.10",
    install_requires=["torch>=2.11"],
    zip_safe=False,
)

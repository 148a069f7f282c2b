"""The one place that drives the CMake build (CMakeLists.txt).

    pip install --no-build-isolation .

builds the library and the Python extension `_C` (no tests, no examples) and
packages them with python/rotary_attention. Build isolation would download a
fresh torch: --no-build-isolation builds against the torch already installed,
which is also the one the extension links against.

scripts/test.sh and scripts/gpu-check.sh build through here too, with extra
CMake options (tests, examples) in $RA_CMAKE_ARGS; $RA_BUILD_DIR names the
build folder (default: build/ in the source tree, reused between builds).
"""

import os
import shlex
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

        build_dir = os.path.abspath(os.environ.get("RA_BUILD_DIR") or os.path.join(ROOT, "build"))
        configure = [
            "cmake",
            "-S",
            ROOT,
            "-B",
            build_dir,
            "-G",
            "Ninja",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            # A package needs the library and the extension only (no Catch2);
            # RA_CMAKE_ARGS, appended below, can turn tests and examples on.
            "-DRA_BUILD_PYTHON=ON",
            "-DRA_BUILD_TESTS=OFF",
            "-DRA_BUILD_EXAMPLES=OFF",
        ]
        if shutil.which("ccache"):
            configure += ["-DCMAKE_CXX_COMPILER_LAUNCHER=ccache", "-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache"]
        configure += shlex.split(os.environ.get("RA_CMAKE_ARGS", ""))
        subprocess.check_call(configure)
        subprocess.check_call(["cmake", "--build", build_dir])

        # CMake writes the paths of what the package holds: the _C module and
        # the library under its soname (the name _C's RPATH $ORIGIN finds).
        with open(os.path.join(build_dir, "python_package_files.txt")) as f:
            files = [line.strip() for line in f if line.strip()]
        package_dir = os.path.dirname(self.get_ext_fullpath(ext.name))
        os.makedirs(package_dir, exist_ok=True)
        extension, *others = files
        shutil.copyfile(extension, self.get_ext_fullpath(ext.name))
        for path in others:
            if os.path.basename(path) == "rotary-whisper":
                # run through the console script of the same name
                os.makedirs(os.path.join(package_dir, "bin"), exist_ok=True)
                shutil.copy(path, os.path.join(package_dir, "bin", os.path.basename(path)))
            else:
                shutil.copyfile(path, os.path.join(package_dir, os.path.basename(path)))


setup(
    ext_modules=[CMakeExtension("rotary_attention._C")],
    cmdclass={"build_ext": CMakeBuild},
)

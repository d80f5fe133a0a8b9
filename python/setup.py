"""Builds the C library (`make lib PORTABLE=1` in the repository root: for
any x86-64 CPU, its AVX-512 and bf16 kernels picked at run time, plus the
same for x86-64-v3 and -v4, whose float32 products use AVX2/AVX-512 and FMA)
and puts it inside the package, so an installed mambabyte finds it next to
itself and loads the highest level the CPU has.  The metadata is in pyproject.toml."""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NAMES = ("libmambabyte.so", "libmambabyte_cuda.so")


class BuildWithLibrary(build_py):
    def run(self):
        super().run()
        if os.path.exists(os.path.join(ROOT, "mambabyte.h")) and shutil.which("make"):
            subprocess.run(["make", "-C", ROOT, "lib", "PORTABLE=1"], check=True)
        built = os.path.join(ROOT, "build", "portable")
        dest = os.path.join(self.build_lib, "mambabyte")
        found = [n for n in NAMES if os.path.exists(os.path.join(built, n))]
        if not found:
            raise RuntimeError("libmambabyte.so is not built: run `make lib PORTABLE=1` in %s" % ROOT)
        for n in found:
            shutil.copy2(os.path.join(built, n), os.path.join(dest, n))
        for level in os.listdir(built):  # the same built for x86-64-v3/v4: the package loads the highest the CPU has
            for n in NAMES:
                if os.path.exists(os.path.join(built, level, n)):
                    os.makedirs(os.path.join(dest, level), exist_ok=True)
                    shutil.copy2(os.path.join(built, level, n), os.path.join(dest, level, n))


cmdclass = {"build_py": BuildWithLibrary}
try:  # the wheel holds a native library: tag it for this platform (py3-none-<platform>), not py3-none-any
    try:
        from setuptools.command.bdist_wheel import bdist_wheel
    except ImportError:
        from wheel.bdist_wheel import bdist_wheel

    class PlatformWheel(bdist_wheel):
        def finalize_options(self):
            super().finalize_options()
            self.root_is_pure = False

        def get_tag(self):
            return ("py3", "none", super().get_tag()[2])  # ctypes only: any Python 3, no Python ABI

    cmdclass["bdist_wheel"] = PlatformWheel
except ImportError:  # no wheel support installed: sdists and direct installs need none
    pass

setup(cmdclass=cmdclass)

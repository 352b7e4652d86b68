"""Builds the `mrcnn._C` torch extension from csrc/.

The C++ CPU kernels are always built. The CUDA kernels are built when the installed torch has
CUDA and nvcc is found; MRCNN_FORCE_CUDA=1 makes a missing CUDA toolchain an error and
MRCNN_NO_CUDA=1 skips the CUDA kernels. Install with

    pip install --no-build-isolation -e .

(without --no-build-isolation pip would fetch a fresh torch into a throw-away build environment).
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "error: building mrcnn needs torch installed first (pip install torch), and pip's "
        "--no-build-isolation so that the build sees it."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def fail(message):
    sys.exit(f"error: cannot build mrcnn._C: {message}")


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def check_cxx_compiler():
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        fail(f"no C++ compiler '{cxx}' on PATH. Install one (Debian/Ubuntu: apt-get install g++) "
             "or point CXX at it.")


def nvcc_path():
    if CUDA_HOME is None:
        return None
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc")
    return nvcc if os.path.exists(nvcc) else None


def check_cuda_versions(nvcc):
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"release (\d+)\.(\d+)", out)
    if found is None:
        fail(f"could not read the CUDA version from '{nvcc} --version'.")
    nvcc_major = int(found.group(1))
    torch_major = int(torch.version.cuda.split(".")[0])
    if nvcc_major != torch_major:
        fail(f"nvcc at {nvcc} is CUDA {found.group(1)}.{found.group(2)} but torch "
             f"{torch.__version__} was built with CUDA {torch.version.cuda}; the major versions "
             "must agree. Point CUDA_HOME at a matching toolkit, or set MRCNN_NO_CUDA=1.")


def build_cuda():
    """True when the CUDA kernels are to be compiled; exits with the reason when forced but impossible."""
    if env_flag("MRCNN_NO_CUDA"):
        return False
    forced = env_flag("MRCNN_FORCE_CUDA")
    if torch.version.cuda is None:
        if forced:
            fail(f"MRCNN_FORCE_CUDA=1 but torch {torch.__version__} is a CPU-only build; install "
                 "a CUDA build of torch.")
        return False
    nvcc = nvcc_path()
    if nvcc is None:
        if forced:
            fail("MRCNN_FORCE_CUDA=1 but nvcc was not found; set CUDA_HOME to the CUDA toolkit.")
        print(f"mrcnn: torch {torch.__version__} has CUDA {torch.version.cuda} but nvcc was not "
              "found (set CUDA_HOME); building the CPU kernels only.", file=sys.stderr)
        return False
    check_cuda_versions(nvcc)
    return True


def extensions():
    check_cxx_compiler()
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    # No contraction of a*b+c into fused multiply-adds (GCC does it for C++ on targets with FMA):
    # the kernels must round every float operation as TensorFlow's CPU kernels do.
    # -Wno-psabi: the CPU kernels pass wide vectors between functions that are always inlined
    # (csrc/cpu_kernels.h), which GCC would warn about as an ABI change.
    cxx_flags = ["-O3", "-ffp-contract=off", "-Wno-psabi"]
    link_flags = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is inlined into our kernels and only runs in parallel under OpenMP.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    if build_cuda():
        sources += sorted(glob.glob(os.path.join("csrc", "*.cu")))
        return [CUDAExtension(
            "mrcnn._C", sources,
            # The CUDA entry points are registered by the host-compiled *_common.cpp files.
            define_macros=[("MRCNN_WITH_CUDA", None)],
            # No fast-math: the kernels must reproduce TensorFlow's float32 arithmetic.
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=link_flags)]
    return [CppExtension("mrcnn._C", sources, extra_compile_args={"cxx": cxx_flags},
                         extra_link_args=link_flags)]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

"""The optional compiled kernel `biogpt.cpu._cpu` (see biogpt/cpu/_cpu.c); everything else is in
pyproject.toml. Without a C compiler, or off x86-64, the package installs without it and
decoding takes the PyTorch kernels (biogpt.cpu.gemv.available() says which)."""

import platform

from setuptools import Extension, setup

x86 = platform.machine().lower() in ("x86_64", "amd64")
setup(
    ext_modules=[
        Extension(
            "biogpt.cpu._cpu",
            ["biogpt/cpu/_cpu.c"],
            depends=["biogpt/cpu/products.h", "biogpt/cpu/step.h"],  # included by _cpu.c
            extra_compile_args=["-O3", "-fopenmp", "-falign-loops=64"],  # aligned loops: +2-5%
            extra_link_args=["-fopenmp"],
            optional=True,  # a failed build leaves the package working, only slower
        )
    ]
    if x86
    else [],
)

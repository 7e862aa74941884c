"""Build hook: setuptools needs `cffi_modules` passed to setup(); everything else is in pyproject.toml.

Each C component is its own cffi extension so they build (and fail) independently.

The packages are listed here because one of them has no directory of its own: the conformance
kit's spec texts ship as the package data ``conformance._spec``, which is spec/ mapped by
``package_dir`` (git keeps the single copy in spec/; conformance.rules.spec_root reads either).
"""
import os
import shutil

from setuptools import find_namespace_packages, setup
from setuptools.command.build_ext import build_ext


class AtomicBuildExt(build_ext):
    """Install built extensions into the source tree by rename, never by rewriting in place.

    An editable install copies each freshly built ``.so`` over the old one. Copying writes into the
    same inode, so a broker that has the old one mapped (a test, a benchmark, a conformance run)
    sees its code change under it and crashes. Writing a new file and renaming it over the old
    path leaves running processes on the old inode."""

    def copy_file(self, infile, outfile, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not str(outfile).endswith((".so", ".pyd")):
            return super().copy_file(infile, outfile, *args, **kwargs)
        if os.path.isdir(outfile):
            outfile = os.path.join(outfile, os.path.basename(infile))
        tmp = f"{outfile}.tmp{os.getpid()}"
        shutil.copyfile(infile, tmp)
        shutil.copymode(infile, tmp)
        os.replace(tmp, outfile)
        return outfile, True


setup(
    cmdclass={"build_ext": AtomicBuildExt},
    packages=[*find_namespace_packages(include=["nanomq*", "conformance*"]), "conformance._spec", "conformance._spec.vectors"],
    package_dir={"conformance._spec": "spec"},
    cffi_modules=[
        "nanomq/_c/build_core.py:ffibuilder",
        "nanomq/_c/build_log.py:ffibuilder",
        "nanomq/_c/build_ring.py:ffibuilder",
    ],
)

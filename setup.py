"""Build hook: setuptools needs `cffi_modules` passed to setup(); everything else is in pyproject.toml.

Each C component is its own cffi extension so they build (and fail) independently.
"""
from setuptools import setup

setup(
    cffi_modules=[
        "nanomq/_c/build_core.py:ffibuilder",
        "nanomq/_c/build_log.py:ffibuilder",
        "nanomq/_c/build_ring.py:ffibuilder",
    ],
)

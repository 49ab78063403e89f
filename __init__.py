"""hallo-rt: real-time inference for audio-driven talking-head video diffusion (Hallo3 family).

Subpackages: `hallo_rt.engine` (model, weights, samplers), `hallo_rt.kernels`, `hallo_rt.export`,
`hallo_rt.runtime` (CLI). Importing `hallo_rt` is light; heavy optional dependencies load on use.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `hallo_rt.Engine` without importing torch and the models on `import hallo_rt`.
    if name == "Engine":
        from .runtime.api import Engine

        return Engine
    raise AttributeError(f"module 'hallo_rt' has no attribute {name!r}")

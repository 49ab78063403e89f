"""hallo-rt: real-time inference for audio-driven talking-head video diffusion (Hallo3 family).

Subpackages: `hallo_rt.engine` (model, weights, samplers), `hallo_rt.kernels`, `hallo_rt.export`,
`hallo_rt.runtime` (CLI). Importing `hallo_rt` is light; heavy optional dependencies load on use.
"""

__version__ = "0.1.0"

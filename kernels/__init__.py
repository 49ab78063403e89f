"""Triton kernels for the hot paths, each beside its plain-torch reference (arrives with the kernels issue)."""

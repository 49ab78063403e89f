"""Tolerances for kernel parity tests, one table (STYLE: Kernels). Compared as
|got - want| <= atol + rtol * |want|, elementwise, after casting both to fp32.

- fp32: Triton (interpreter, or compiled with IEEE dots) vs the torch reference differ only in summation
  order and in rounding once instead of after every op: 1e-5.
- fp16 / bf16: the reference rounds after each unfused op (LayerNorm, then modulation; attention in the
  half dtype), the kernel rounds once at the store; ~1 ulp of the output plus accumulated rounding:
  fp16 (10-bit mantissa, ulp 1e-3 at 1) -> 1e-2; bf16 (7-bit, ulp 8e-3 at 1) -> 4e-2.
- Two routes to the same kernel (custom op vs direct launcher): exact.
- The fused model (apply_kernels) vs the plain model, fp32: 1e-4, since errors accumulate over layers.
"""

import torch

KERNEL_TOLERANCE = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=4e-2, rtol=4e-2),
}

MODEL_TOLERANCE_FP32 = dict(atol=1e-4, rtol=1e-4)


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype | None = None, **override):
    """Parity check with the table's tolerance for `dtype` (default: want's dtype)."""
    tol = dict(KERNEL_TOLERANCE[dtype or want.dtype], **override)
    torch.testing.assert_close(got.float(), want.float(), **tol)

"""A CPU speed-up for the VAE's small causal 3D convolutions: the same maths through oneDNN's 2D path.

PyTorch's CPU convolution sends a float32 3D convolution to oneDNN only when the batch is > 1 or
B*C*T*H > 20480 (`ConvParams::use_mkldnn`, aten/src/ATen/native/Convolution.cpp); below that it takes
`slow_conv3d` (im2col + GEMM), which is 2-3x slower for the narrow, high-resolution layers of a small
VAE decoding a few frames at a time. A k x 3 x 3 convolution over time-padded frames is the sum over its
k temporal taps of 2D convolutions, i.e. one 2D convolution whose input stacks k consecutive frames along
channels: `(B*T, k*C, H, W) * (O, k*C, 3, 3)`. Same products, summed in another order: the outputs match
`F.conv3d` to float rounding (about 1e-6 relative), not bit for bit.

`small_cpu_convolutions(vae)` swaps the convolutions of every `CausalConv3d` for `StackedTimeConv3d`,
which keeps the parameters (and their state-dict names) and takes the 2D route only when PyTorch would
take `slow_conv3d`; graph capture (ONNX export, torch.compile, tracing) always sees the plain Conv3d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .vae import CausalConv3d

ONEDNN_MIN_ELEMENTS = 20480
"""PyTorch uses oneDNN for a batch-1 float32 CPU 3D convolution when B*C*T*H exceeds this."""


def _capturing() -> bool:
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting())


def takes_slow_path(x: torch.Tensor, conv: nn.Conv3d) -> bool:
    """Whether PyTorch would run this CPU convolution through `slow_conv3d` (the case worth rerouting)."""
    batch, channels, frames, height = x.shape[:4]
    return (x.device.type == "cpu" and x.dtype == torch.float32 and batch == 1 and conv.groups == 1
            and conv.stride == (1, 1, 1) and conv.dilation == (1, 1, 1)
            and batch * channels * frames * height <= ONEDNN_MIN_ELEMENTS)


class StackedTimeConv3d(nn.Conv3d):
    """`nn.Conv3d` (no temporal padding, spatial padding only) that runs small CPU inputs as one 2D
    convolution over frame-stacked channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _capturing() or not takes_slow_path(x, self):
            return super().forward(x)
        batch, channels, frames, height, width = x.shape
        taps = self.kernel_size[0]
        out_frames = frames - taps + 1
        if taps == 1 and self.kernel_size[1:] == (1, 1):  # pointwise: a matrix product over channels
            weight = self.weight.view(self.out_channels, channels)
            y = torch.einsum("bcthw,oc->bothw", x, weight)  # (B, O, T, H, W)
            return y + self.bias.view(1, -1, 1, 1, 1) if self.bias is not None else y
        # (B, C, T', H, W, k) windows -> (B*T', k*C, H, W), tap-major like the weight below
        stacked = x.unfold(2, taps, 1).permute(0, 2, 5, 1, 3, 4).reshape(batch * out_frames, taps * channels,
                                                                        height, width)
        weight = self.weight.transpose(1, 2).reshape(self.out_channels, taps * channels, *self.kernel_size[1:])
        y = F.conv2d(stacked, weight, self.bias, padding=self.padding[1:])  # (B*T', O, H', W')
        return y.unflatten(0, (batch, out_frames)).transpose(1, 2)


def _swap_convolutions(model: nn.Module, kind: type[nn.Conv3d]) -> nn.Module:
    """Every `CausalConv3d`'s convolution as a `kind`, holding the same parameter objects (in place)."""
    for module in model.modules():
        if isinstance(module, CausalConv3d) and type(module.conv) is not kind:
            old = module.conv
            new = kind(old.in_channels, old.out_channels, old.kernel_size, padding=old.padding,
                       bias=old.bias is not None, device="meta")
            new.weight, new.bias = old.weight, old.bias
            module.conv = new
    return model


def small_cpu_convolutions(model: nn.Module) -> nn.Module:
    """Return `model` with every `CausalConv3d`'s convolution rerouted as above (in place; same weights)."""
    return _swap_convolutions(model, StackedTimeConv3d)


def plain_convolutions(model: nn.Module) -> nn.Module:
    """Undo `small_cpu_convolutions`: every `CausalConv3d` back on a plain `nn.Conv3d` (in place; same
    weights), as the reference implementations run it."""
    return _swap_convolutions(model, nn.Conv3d)

"""VAE checkpoints for the tests: hallo-rt (= diffusers) parameter names -> SAT `3d-vae.pt` names, and the SAT
key list enumerated the way SAT's constructors build it.

Both are written from SAT `hallo3/vae_modules/cp_enc_dec.py` (`ContextParallelEncoder3D`/`Decoder3D`) and
deliberately share nothing with `hallo_rt.engine.weights.vae_format`, so that the loader's renaming is checked
against an independent derivation rather than against itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

SAT_FILE = "3d-vae.pt"


def _resnet_rest(parts: list[str]) -> list[str]:
    # SAT's 1x1x1 width-changing shortcut is `nin_shortcut` (its `conv_shortcut` would be a 3x3x3 causal conv,
    # which CogVideoX never builds); diffusers calls the 1x1x1 one `conv_shortcut`.
    return ["nin_shortcut" if part == "conv_shortcut" else part for part in parts]


def engine_to_sat_vae_keys(state: dict[str, Tensor], levels: int) -> dict[str, Tensor]:
    """Rename a hallo-rt/diffusers VAE state dict to SAT's names.

    encoder.down_blocks.{i}.resnets.{j}      -> encoder.down.{i}.block.{j}
    encoder.down_blocks.{i}.downsamplers.0   -> encoder.down.{i}.downsample
    decoder.up_blocks.{k}.resnets.{j}        -> decoder.up.{levels-1-k}.block.{j}   (SAT indexes by resolution)
    decoder.up_blocks.{k}.upsamplers.0       -> decoder.up.{levels-1-k}.upsample
    {encoder,decoder}.mid_block.resnets.{n}  -> {encoder,decoder}.mid.block_{n+1}
    conv_shortcut                            -> nin_shortcut
    Everything else (conv_in, norm_out, conv_out, the norms' norm_layer/conv_y/conv_b) keeps its name.
    """
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        side, container = parts[0], parts[1]
        if container == "mid_block":
            assert parts[2] == "resnets", key
            sat = [side, "mid", f"block_{int(parts[3]) + 1}", *_resnet_rest(parts[4:])]
        elif container in ("down_blocks", "up_blocks"):
            index = int(parts[2])
            head = [side, "down", str(index)] if container == "down_blocks" else [side, "up", str(levels - 1 - index)]
            kind, rest = parts[3], parts[4:]
            if kind == "resnets":
                sat = [*head, "block", rest[0], *_resnet_rest(rest[1:])]
            elif kind in ("downsamplers", "upsamplers"):
                assert rest[0] == "0", key
                sat = [*head, "downsample" if kind == "downsamplers" else "upsample", *rest[1:]]
            else:
                raise AssertionError(f"unexpected engine key {key}")
        else:
            sat = parts
        name = ".".join(sat)
        assert name not in out, f"two engine keys map to {name}"
        out[name] = tensor
    return out


def sat_vae_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Every key of SAT's autoencoder (encoder + decoder) with its shape, for a hallo-rt VaeConfig: a walk
    over `ContextParallelEncoder3D.__init__` / `ContextParallelDecoder3D.__init__` (no attention, temb_ch=0)."""
    ch, mult, blocks = cfg.base_channels, tuple(cfg.channel_multipliers), cfg.num_res_blocks
    z, rgb, n = cfg.latent_channels, cfg.image_channels, len(cfg.channel_multipliers)
    shapes: dict[str, tuple[int, ...]] = {}

    def causal_conv(prefix: str, cin: int, cout: int, k: int) -> None:  # ContextParallelCausalConv3d
        shapes[f"{prefix}.conv.weight"] = (cout, cin, k, k, k)
        shapes[f"{prefix}.conv.bias"] = (cout,)

    def group_norm(prefix: str, c: int) -> None:
        shapes[f"{prefix}.weight"] = (c,)
        shapes[f"{prefix}.bias"] = (c,)

    def spatial_norm(prefix: str, c: int) -> None:  # SpatialNorm3D(add_conv=False)
        group_norm(f"{prefix}.norm_layer", c)
        causal_conv(f"{prefix}.conv_y", z, c, 1)
        causal_conv(f"{prefix}.conv_b", z, c, 1)

    def resnet(prefix: str, cin: int, cout: int, decoder: bool) -> None:  # ContextParallelResnetBlock3D
        norm = spatial_norm if decoder else group_norm
        norm(f"{prefix}.norm1", cin)
        causal_conv(f"{prefix}.conv1", cin, cout, 3)
        norm(f"{prefix}.norm2", cout)
        causal_conv(f"{prefix}.conv2", cout, cout, 3)
        if cin != cout:
            shapes[f"{prefix}.nin_shortcut.weight"] = (cout, cin, 1, 1, 1)
            shapes[f"{prefix}.nin_shortcut.bias"] = (cout,)

    # encoder
    causal_conv("encoder.conv_in", rgb, ch, 3)
    in_ch_mult = (1,) + mult
    for i_level in range(n):
        block_in, block_out = ch * in_ch_mult[i_level], ch * mult[i_level]
        for i_block in range(blocks):
            resnet(f"encoder.down.{i_level}.block.{i_block}", block_in, block_out, decoder=False)
            block_in = block_out
        if i_level != n - 1:
            shapes[f"encoder.down.{i_level}.downsample.conv.weight"] = (block_in, block_in, 3, 3)
            shapes[f"encoder.down.{i_level}.downsample.conv.bias"] = (block_in,)
    resnet("encoder.mid.block_1", block_in, block_in, decoder=False)
    resnet("encoder.mid.block_2", block_in, block_in, decoder=False)
    group_norm("encoder.norm_out", block_in)
    causal_conv("encoder.conv_out", block_in, 2 * z, 3)
    # decoder
    block_in = ch * mult[n - 1]
    causal_conv("decoder.conv_in", z, block_in, 3)
    resnet("decoder.mid.block_1", block_in, block_in, decoder=True)
    resnet("decoder.mid.block_2", block_in, block_in, decoder=True)
    for i_level in reversed(range(n)):
        block_out = ch * mult[i_level]
        for i_block in range(blocks + 1):
            resnet(f"decoder.up.{i_level}.block.{i_block}", block_in, block_out, decoder=True)
            block_in = block_out
        if i_level != 0:
            shapes[f"decoder.up.{i_level}.upsample.conv.weight"] = (block_in, block_in, 3, 3)
            shapes[f"decoder.up.{i_level}.upsample.conv.bias"] = (block_in,)
    spatial_norm("decoder.norm_out", block_in)
    causal_conv("decoder.conv_out", block_in, rgb, 3)
    return shapes


def loss_junk(seed: int = 0) -> dict[str, Tensor]:
    """Tensors a SAT VAE training checkpoint keeps beside the autoencoder (LPIPS and the discriminator)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "loss.perceptual_loss.net.slice1.0.weight": torch.randn(4, 3, 3, 3, generator=g),
        "loss.perceptual_loss.lin0.model.1.weight": torch.randn(1, 4, 1, 1, generator=g),
        "loss.discriminator.blocks.0.conv.weight": torch.randn(4, 3, 3, 3, 3, generator=g),
        "loss.discriminator.blocks.0.conv.bias": torch.randn(4, generator=g),
        "loss.logvar": torch.zeros(()),
    }


def write_sat_vae(path: Path, sat_state: dict[str, Tensor], wrapper: str = "state_dict") -> Path:
    """torch.save `{wrapper: sat_state}` at `path` (a file name), creating folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({wrapper: {k: v.clone() for k, v in sat_state.items()}}, path)
    return path

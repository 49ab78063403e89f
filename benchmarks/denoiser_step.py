"""Time one denoiser step of a preset (default `tiny`) on CPU next to diffusers eager, same config and weights.

diffusers has no Hallo3 modules, so the side-by-side uses the preset's backbone (face/audio off, no bank);
the full Hallo3 step (face + audio cross-attention + reference bank) is timed as well, for the engine only.

    .venv/bin/python benchmarks/denoiser_step.py [--preset tiny] [--batch 2] [--repeats 30] [--out FILE]

Writes JSON: machine, versions, both timings (median / p10 / p90), the ratio, and the max abs difference
between the two outputs (they must agree, or the timing compares different computations).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from hallo_rt.benchmarks.environment import machine

from hallo_rt import __version__
from hallo_rt.engine import HalloDiT, get_preset, load_dit, load_reference_net
from hallo_rt.engine.weights.common import seeded_init_


def to_diffusers(dit: HalloDiT):
    """A diffusers CogVideoXTransformer3DModel holding the same weights as a backbone-only HalloDiT."""
    from diffusers import CogVideoXTransformer3DModel

    c = dit.config
    model = CogVideoXTransformer3DModel(
        num_attention_heads=c.num_heads, attention_head_dim=c.head_dim, in_channels=c.in_channels,
        out_channels=c.out_channels, time_embed_dim=c.time_embed_dim, text_embed_dim=c.text_dim,
        num_layers=c.num_layers, sample_width=c.latent_width, sample_height=c.latent_height,
        sample_frames=c.video_frames, patch_size=c.patch_size, max_text_seq_length=c.text_len,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=c.learned_pos_embed,
        norm_eps=c.norm_eps,
    ).eval()
    ours = dit.state_dict()
    state = {
        "patch_embed.proj.weight": ours["patch_embed.proj.weight"], "patch_embed.proj.bias": ours["patch_embed.proj.bias"],
        "patch_embed.text_proj.weight": ours["patch_embed.text_proj.weight"],
        "patch_embed.text_proj.bias": ours["patch_embed.text_proj.bias"],
        "time_embedding.linear_1.weight": ours["time_embed.linear_1.weight"],
        "time_embedding.linear_1.bias": ours["time_embed.linear_1.bias"],
        "time_embedding.linear_2.weight": ours["time_embed.linear_2.weight"],
        "time_embedding.linear_2.bias": ours["time_embed.linear_2.bias"],
        "norm_final.weight": ours["norm_final.weight"], "norm_final.bias": ours["norm_final.bias"],
        "norm_out.norm.weight": ours["final_layer.norm.weight"], "norm_out.norm.bias": ours["final_layer.norm.bias"],
        "norm_out.linear.weight": ours["final_layer.modulation.weight"],
        "norm_out.linear.bias": ours["final_layer.modulation.bias"],
        "proj_out.weight": ours["final_layer.linear.weight"], "proj_out.bias": ours["final_layer.linear.bias"],
    }
    if c.learned_pos_embed:
        state["patch_embed.pos_embedding"] = ours["pos_embedding"]
    for i in range(c.num_layers):
        b, d = f"blocks.{i}.", f"transformer_blocks.{i}."
        for kind in ("weight", "bias"):
            q, k, v = ours[f"{b}attn.qkv.{kind}"].chunk(3)
            state.update({f"{d}attn1.to_q.{kind}": q, f"{d}attn1.to_k.{kind}": k, f"{d}attn1.to_v.{kind}": v})
            mods = ours[f"{b}modulation.{kind}"].chunk(4)  # [msa, mlp, text msa, text mlp]
            state[f"{d}norm1.linear.{kind}"] = torch.cat([mods[0], mods[2]])
            state[f"{d}norm2.linear.{kind}"] = torch.cat([mods[1], mods[3]])
            for src, dst in (("norm1", "norm1.norm"), ("norm2", "norm2.norm"), ("attn.norm_q", "attn1.norm_q"),
                             ("attn.norm_k", "attn1.norm_k"), ("attn.out", "attn1.to_out.0"),
                             ("mlp.fc1", "ff.net.0.proj"), ("mlp.fc2", "ff.net.2")):
                state[f"{d}{dst}.{kind}"] = ours[f"{b}{src}.{kind}"]
    model.load_state_dict(state, strict=True)
    return model


def time_calls(fn, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return {"median_ms": statistics.median(samples) * 1e3, "p10_ms": samples[len(samples) // 10] * 1e3,
            "p90_ms": samples[(len(samples) * 9) // 10] * 1e3, "repeats": repeats, "warmup": warmup}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=2, help="2 = one CFG step (uncond + cond)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "denoiser_step_cpu.json"))
    args = parser.parse_args(argv)
    import diffusers

    torch.manual_seed(0)
    preset = get_preset(args.preset)
    # diffusers' output norm uses norm_eps; match it so both sides compute the same function.
    backbone_cfg = dataclasses.replace(preset, face_cross_attention=False, audio_cross_attention=False,
                                       out_norm_eps=preset.norm_eps)
    backbone = seeded_init_(HalloDiT(backbone_cfg), 0).eval().requires_grad_(False)
    reference = to_diffusers(backbone)
    c, B = backbone_cfg, args.batch
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(B, c.latent_frames, c.in_channels, c.latent_height, c.latent_width, generator=g)
    text = torch.randn(B, c.text_len, c.text_dim, generator=g)
    t = torch.full((B,), 500)
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    h, w = c.latent_height // c.patch_size, c.latent_width // c.patch_size
    rotary = get_3d_rotary_pos_embed(c.head_dim, ((0, 0), (h, w)), (h, w), c.latent_frames)

    with torch.inference_mode():
        ours_out = backbone(latents, t, text)
        ref_out = reference(latents, text, t, image_rotary_emb=rotary, return_dict=False)[0]
        max_diff = float((ours_out - ref_out).abs().max())
        engine = time_calls(lambda: backbone(latents, t, text), args.repeats, args.warmup)
        diffusers_t = time_calls(lambda: reference(latents, text, t, image_rotary_emb=rotary, return_dict=False),
                                 args.repeats, args.warmup)
        full = load_dit(args.preset)
        bank = load_reference_net(args.preset)(torch.randn(1, 1, c.out_channels, c.latent_height, c.latent_width))
        audio = torch.randn(B, c.video_frames, preset.audio_window, preset.audio_layers, preset.audio_dim)
        face = torch.randn(B, preset.face_embed_dim)
        hallo3_step = time_calls(lambda: full(latents, t, text, audio=audio, face=face, ref_bank=bank),
                                 args.repeats, args.warmup)
    result = {
        "benchmark": "denoiser_step", "preset": args.preset, "batch": B,
        "tokens_per_step": c.text_len + c.latent_frames * c.tokens_per_frame,
        "config_hash": preset.compute_hash(), "backbone_config_hash": backbone_cfg.compute_hash(),
        "backend_used": "torch eager (CPU)", "device": "cpu", "machine": machine(),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "hallo_rt": __version__},
        "engine_backbone_step": engine, "diffusers_backbone_step": diffusers_t,
        "speedup_vs_diffusers": diffusers_t["median_ms"] / engine["median_ms"],
        "max_abs_diff_vs_diffusers": max_diff,
        "engine_hallo3_step_with_face_audio_bank": hallo3_step,
        "command": "python benchmarks/denoiser_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("engine_backbone_step", "diffusers_backbone_step", "speedup_vs_diffusers",
                                             "max_abs_diff_vs_diffusers", "engine_hallo3_step_with_face_audio_bank")},
                     indent=2))
    print(f"wrote {out}")
    return 0 if max_diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())

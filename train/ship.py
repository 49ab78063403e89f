"""Stage 4: package the trained demo avatar as a hallo-rt model folder (the embedded default).

    python -m hallo_rt.train.ship --vae runs/vae --denoiser runs/distill/round_4to2 --out engine/weights/demo

Writes `hallo_rt.json` (configs, weight digests, the settings the model streams with, the training record),
`dit.safetensors`, `reference_net.safetensors`, `vae.safetensors` and `wav2vec2/` (a Hugging Face-style
folder: config.json, preprocessor_config.json, model.safetensors), in fp16 (12 MB in all). `--steps` and the denoiser
folder say which model is shipped: a distilled student (the default, 2 DDIM steps) or the stage-2 teacher.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..engine.weights import save_engine_format
from .demo import AUDIO_DEMO, STREAM_DEFAULTS
from .loop import SETTINGS, load_stage_modules, read_losses, stage_settings
from .train_denoiser import DemoAvatar, load_vae


def wav2vec2_hf_config(cfg) -> dict:
    """The Hugging Face config.json of a `Wav2Vec2Config` (what `Wav2Vec2Config.from_hf_dict` reads back)."""
    return {"model_type": "wav2vec2", "architectures": ["Wav2Vec2Model"], "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "intermediate_size": cfg.intermediate_size, "conv_dim": list(cfg.conv_dims),
            "conv_kernel": list(cfg.conv_kernels), "conv_stride": list(cfg.conv_strides), "conv_bias": cfg.conv_bias,
            "feat_extract_norm": cfg.feat_extract_norm, "do_stable_layer_norm": cfg.do_stable_layer_norm,
            "num_conv_pos_embeddings": cfg.pos_conv_kernel, "num_conv_pos_embedding_groups": cfg.pos_conv_groups,
            "layer_norm_eps": cfg.layer_norm_eps, "hidden_act": "gelu"}


def write_audio_encoder(encoder, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(wav2vec2_hf_config(encoder.config), indent=2) + "\n")
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "sampling_rate": 16000, "feature_size": 1, "padding_value": 0.0,
         "return_attention_mask": False}, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(folder / "model.safetensors"))


def stage_record(folder: Path) -> dict:
    settings = json.loads((folder / SETTINGS).read_text())
    losses = read_losses(folder)
    return {"settings": settings.get("settings"), "final": losses[-1] if losses else None,
            "seconds": losses[-1]["seconds"] if losses else None}


def ship(vae_folder: Path, denoiser_folder: Path, out: Path, steps: int, extra_stages: list[Path],
         motion_noise: float = 0.0) -> Path:
    model = DemoAvatar()
    model.load_state_dict(load_stage_modules(denoiser_folder, "denoiser")["model"])
    vae = load_vae(vae_folder)
    for module in (model, vae):  # stored in fp16 (half the bytes; loading casts to the dtype asked for)
        module.eval().requires_grad_(False).half()
    save_engine_format(out, model.dit, model.reference_net, source="hallo-rt demo avatar (train/README.md)",
                       vae=vae)
    write_audio_encoder(model.audio, out / "wav2vec2")
    manifest = json.loads((out / "hallo_rt.json").read_text())
    # a model trained with anchored motion latents must stream with the same blend
    anchor = float(stage_settings(denoiser_folder).get("motion_anchor", 0.0))
    defaults = {**STREAM_DEFAULTS, "steps": steps, **({"motion_noise": motion_noise} if motion_noise else {}),
                **({"motion_anchor": anchor} if anchor else {})}
    manifest.update({
        "stream_defaults": defaults, "face_embedding": "none", "audio_encoder": AUDIO_DEMO.to_dict(),
        "training": {str(p): stage_record(p) for p in [vae_folder, *extra_stages, denoiser_folder]},
    })
    (out / "hallo_rt.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hallo_rt.train.ship", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", type=Path, default=Path("runs/vae"))
    parser.add_argument("--denoiser", type=Path, default=Path("runs/distill/round_4to2"),
                        help="the stage folder whose model is shipped (a distillation round, or the teacher)")
    parser.add_argument("--stages", type=Path, nargs="*",
                        default=[Path("runs/denoiser"), Path("runs/distill/round_8to4")],
                        help="other stage folders to record in the manifest's training history")
    parser.add_argument("--steps", type=int, default=STREAM_DEFAULTS["steps"], help="DDIM steps it streams with")
    parser.add_argument("--motion-noise", type=float, default=0.0,
                        help="noise on the carried motion latent it streams with (`ChunkSettings.motion_noise`; "
                             "within the training's --motion-jitter; default 0)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.motion_noise < 0:
        parser.error("--motion-noise must be >= 0")
    torch.manual_seed(0)
    out = ship(args.vae, args.denoiser, args.out, args.steps, [p for p in args.stages if (p / SETTINGS).is_file()],
               args.motion_noise)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({total / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

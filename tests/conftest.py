"""Shared fixtures: a small random CogVideoX in diffusers format, and the same weights as SAT checkpoints
(plain CogVideoX and Hallo3 with its extras and reference network), written by the tests themselves."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

# Triton kernels run in Triton's interpreter on CPU-only machines. Triton decides at decoration time, so
# this must happen before anything imports hallo_rt.kernels. With a GPU the kernels compile for it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from checkpoint_factory import diffusers_to_sat_keys, hallo3_extras, write_sat_checkpoint  # noqa: E402

from helpers import AUDIO, FACE, SMALL, random_diffusers_model  # noqa: E402

@dataclass
class Checkpoints:
    diffusers_model: object
    diffusers_dir: Path
    diffusers_sharded_dir: Path
    sat_plain_dir: Path
    sat_hallo3_dir: Path
    hallo3_module: dict
    reference_model: object


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Checkpoints:
    root = tmp_path_factory.mktemp("ckpt")
    model = random_diffusers_model(0)
    model.save_pretrained(root / "diffusers")
    model.save_pretrained(root / "diffusers_sharded", max_shard_size="100KB")
    backbone = diffusers_to_sat_keys({k: v.float() for k, v in model.state_dict().items()})
    write_sat_checkpoint(root / "sat_plain", backbone)
    reference_model = random_diffusers_model(1)
    g = torch.Generator().manual_seed(2)
    module = dict(backbone)
    module.update(hallo3_extras(SMALL["num_layers"], SMALL["heads"] * SMALL["head_dim"], generator=g,
                                face_embed_dim=FACE["face_embed_dim"], face_tokens=FACE["face_tokens"],
                                face_token_dim=FACE["face_token_dim"], audio_window=AUDIO["audio_window"],
                                audio_layers=AUDIO["audio_layers"], audio_dim=AUDIO["audio_dim"],
                                audio_hidden=AUDIO["audio_hidden"], audio_tokens=AUDIO["audio_tokens"],
                                audio_token_dim=AUDIO["audio_token_dim"]))
    module.update(diffusers_to_sat_keys({k: v.float() for k, v in reference_model.state_dict().items()},
                                        prefix="ref_model.diffusion_model."))
    write_sat_checkpoint(root / "sat_hallo3", module)
    return Checkpoints(model, root / "diffusers", root / "diffusers_sharded", root / "sat_plain",
                       root / "sat_hallo3", module, reference_model)

"""The model: configs, the Hallo3 denoiser and reference network, samplers, weights.

Public API:
    load_dit(path_or_preset, dtype=torch.float32, device="cpu") -> HalloDiT
    load_reference_net(path_or_preset, dtype=..., device=...) -> ReferenceNet
    load_vae(path_or_preset, dtype=..., device=...) -> CogVideoXVae (encode, decode, stream_decoder)
    DiTConfig, PRESETS, get_preset
    SamplerConfig, sample, ... (see hallo_rt.engine.sampling)
"""

from .config import PRESETS, VAE_PRESETS, DiTConfig, VaeConfig, get_preset
from .dit import HalloDiT
from .reference import ReferenceNet, reference_config
from .validation import InputError
from .vae import REFERENCE_GROUPING, SINGLE_FRAME_GROUPING, CogVideoXVae, Grouping, StreamingVaeDecoder
from .weights import WeightsError, convert, load_dit, load_reference_net, load_vae, save_engine_format

__all__ = [
    "PRESETS", "DiTConfig", "get_preset", "HalloDiT", "ReferenceNet", "reference_config", "InputError",
    "WeightsError", "convert", "load_dit", "load_reference_net", "save_engine_format",
    "VAE_PRESETS", "VaeConfig", "CogVideoXVae", "Grouping", "StreamingVaeDecoder", "REFERENCE_GROUPING",
    "SINGLE_FRAME_GROUPING", "load_vae",
]

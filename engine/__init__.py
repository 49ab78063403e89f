"""The model: configs, the Hallo3 denoiser and reference network, samplers, weights.

Public API:
    load_dit(path_or_preset, dtype=torch.float32, device="cpu") -> HalloDiT
    load_reference_net(path_or_preset, dtype=..., device=...) -> ReferenceNet
    DiTConfig, PRESETS, get_preset
    SamplerConfig, sample, ... (see hallo_rt.engine.sampling)
"""

from .config import PRESETS, DiTConfig, get_preset
from .dit import HalloDiT
from .reference import ReferenceNet, reference_config
from .validation import InputError
from .weights import WeightsError, convert, load_dit, load_reference_net, save_engine_format

__all__ = [
    "PRESETS", "DiTConfig", "get_preset", "HalloDiT", "ReferenceNet", "reference_config", "InputError",
    "WeightsError", "convert", "load_dit", "load_reference_net", "save_engine_format",
]

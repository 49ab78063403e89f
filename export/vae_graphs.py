"""The VAE decoder as stateless chunk graphs: the causal caches are explicit inputs and outputs, so an engine
without state (ONNX Runtime, TensorRT) can stream a clip while the caller carries the caches.

What a clip carries between groups (`engine.vae.CausalState`), and nothing else:
- the last two inputs of every 3-frame causal convolution (`CausalConv3d` with time_pad 2). The spatial
  norms' 1x1x1 convolutions pad nothing in time, so they have no cache; every GroupNorm takes its
  statistics over one group only, so no norm keeps state either;
- `at_start`, which changes two things in the clip's first group: the causal padding repeats the first
  frame instead of reading a cache, and an odd-length first group keeps its first latent frame apart
  (one pixel frame; `_split_first` in `Upsample3D` and `SpatialNorm3D`).

Both are fixed for a graph once its group size and position are fixed, so a clip is decoded by two graphs:

    vae_decoder_first   latents (B, C, first, h, w)                -> frames, next_cache_00 ... next_cache_NN
    vae_decoder_next    latents (B, C, then, h, w), cache_00 ... NN -> frames, next_cache_00 ... next_cache_NN

`first` and `then` are the `Grouping`'s sizes: the reference decode of a 13-latent-frame clip is
`Grouping.for_clip(13)` = (3, 2), single-frame streaming (1, 1). A first group of n frames gives
1 + 4(n - 1) pixel frames when n is odd and 4n when even; a continuation group gives 4n. The split branch
is chosen while tracing, from the static group size, so each graph runs exactly the ops `decode_group` runs
for that group: the torch modules equal `CogVideoXVae.decode` / `StreamingVaeDecoder` bit for bit.

A fixed grouping such as (3, 2) on a clip whose length is not first + k * then ends (or, for a clip shorter
than `first`, starts) with a shorter group; `short_groups=True` adds a graph per shorter size
(`vae_decoder_first_2`, `vae_decoder_next_1`, ...). `Grouping.for_clip` never needs them.

Cache slot i is the i-th 3-frame causal conv of the decoder in module order (`cache_slots`); the descriptor's
config lists the module paths. Caches are (B, C_i, 2, h_i, w_i) at that conv's input resolution.

Conventions match `StreamingVaeDecoder.decode`: the latents are the VAE's own (the denoiser's latents divided
by `VaeConfig.scaling_factor`), the frames (B, 3, T, 8h, 8w) are clamped to [-1, 1] (unless clamp=False).

`ChunkedVaeDecoder` streams a clip through any runner with the descriptor call convention
`runner(inputs: dict[str, Tensor]) -> dict[str, Tensor]`, mirroring `StreamingVaeDecoder`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..engine.config import VaeConfig
from ..engine.vae import (
    REFERENCE_GROUPING,
    CausalConv3d,
    CausalState,
    CogVideoXVae,
    GroupedLatentBuffer,
    Grouping,
    resolve_grouping,
)
from ..engine.validation import InputError
from .descriptors import PRECISIONS, GraphDescriptor, TensorSpec

Runner = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]

LATENTS, FRAMES = "latents", "frames"


def cache_input_name(slot: int) -> str:
    return f"cache_{slot:02d}"


def cache_output_name(slot: int) -> str:
    return f"next_cache_{slot:02d}"


def cache_slots(vae: CogVideoXVae) -> list[tuple[str, CausalConv3d]]:
    """(module path, module) of every decoder conv that carries a cache, in module order: the slot order."""
    return [(f"decoder.{name}", module) for name, module in vae.decoder.named_modules()
            if isinstance(module, CausalConv3d) and module.time_pad]


class VaeDecoderChunk(nn.Module):
    """One decoder group with the causal caches as plain tensors.

    start=True: `forward(latents) -> (frames, *caches)`, the clip's first group (first-frame padding, and
    an odd group keeps its first frame apart). start=False: `forward(latents, *caches) -> (frames, *caches)`,
    a continuation group. Shares the VAE's weights.
    """

    def __init__(self, vae: CogVideoXVae, start: bool, clamp: bool = True) -> None:
        super().__init__()
        self.decoder = vae.decoder
        self.start, self.clamp = start, clamp
        self.training = vae.training  # the wrapper's own flag: exporters warn about a module in training mode
        # plain list, not a ModuleList: the convs are already registered under self.decoder
        self._slots = [module for _, module in cache_slots(vae)]

    def forward(self, latents: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        expected = 0 if self.start else len(self._slots)
        if len(caches) != expected:
            raise InputError(f"{'first' if self.start else 'continuation'} decoder group takes {expected} "
                             f"caches, got {len(caches)}")
        state = CausalState()
        state.at_start = self.start
        state.caches = dict(zip(self._slots, caches))
        frames = self.decoder(latents, state)  # (B, 3, T, 8h, 8w); refills state.caches
        if self.clamp:
            frames = frames.clamp(-1.0, 1.0)
        return (frames, *(state.caches[module] for module in self._slots))


# ----------------------------------------------------------------------------------------------------
# Descriptors.


def graph_name(start: bool, frames: int, grouping: Grouping) -> str:
    """`vae_decoder_first` / `vae_decoder_next` for the grouping's sizes, `..._<frames>` for shorter groups."""
    kind, full = ("first", grouping.first) if start else ("next", grouping.then)
    return f"vae_decoder_{kind}" if frames == full else f"vae_decoder_{kind}_{frames}"


@functools.lru_cache(maxsize=8)
def _meta_vae(config: VaeConfig) -> CogVideoXVae:
    with torch.device("meta"):
        return CogVideoXVae(config)


@functools.lru_cache(maxsize=64)
def _traced_shapes(config: VaeConfig, batch: int, height: int, width: int, start: bool, frames: int
                   ) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """(frames shape, cache shapes) of one group, from running the decoder on meta tensors: the shapes come
    from the model itself, so they cannot drift from it."""
    vae = _meta_vae(config)
    latents = torch.empty(batch, config.latent_channels, frames, height, width, device="meta")
    caches = () if start else tuple(torch.empty(s, device="meta")
                                    for s in _traced_shapes(config, batch, height, width, True, 1)[1])
    with torch.no_grad():
        out = VaeDecoderChunk(vae, start)(latents, *caches)
    return tuple(out[0].shape), tuple(tuple(c.shape) for c in out[1:])


def vae_decoder_descriptor(vae: VaeConfig, latent_height: int, latent_width: int, start: bool, frames: int,
                           grouping: Grouping | str = REFERENCE_GROUPING, precision: str = "fp32", *,
                           batch: int = 1, clamp: bool = True) -> GraphDescriptor:
    """One decoder group of `frames` latent frames (the clip's first group if `start`), static shapes."""
    grouping = resolve_grouping(grouping)
    if frames < 1:
        raise ValueError(f"a decoder group needs >= 1 latent frame, got {frames}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; available: {', '.join(PRECISIONS)}")
    frames_shape, cache_shapes = _traced_shapes(vae, batch, latent_height, latent_width, start, frames)
    latents = TensorSpec(LATENTS, (batch, vae.latent_channels, frames, latent_height, latent_width))
    cache_in = () if start else tuple(TensorSpec(cache_input_name(i), s) for i, s in enumerate(cache_shapes))
    cache_out = tuple(TensorSpec(cache_output_name(i), s) for i, s in enumerate(cache_shapes))
    config = {
        "vae": vae.to_dict(), "start": start, "latent_frames": frames, "clamp": clamp,
        "grouping": {"first": grouping.first, "then": grouping.then},
        "cache_modules": [name for name, _ in cache_slots(_meta_vae(vae))],
        "latents": "the VAE's own: the denoiser's latents / scaling_factor",
    }
    return GraphDescriptor(graph_name(start, frames, grouping), (latents, *cache_in),
                           (TensorSpec(FRAMES, frames_shape), *cache_out), (), precision, config)


def vae_decoder_descriptors(vae: VaeConfig, latent_height: int, latent_width: int,
                            grouping: Grouping | str = REFERENCE_GROUPING, precision: str = "fp32", *,
                            batch: int = 1, short_groups: bool = False,
                            clamp: bool = True) -> dict[str, GraphDescriptor]:
    """The graphs that decode clips with `grouping`: first and next, plus every shorter group size when
    `short_groups` (needed only when a clip's length is not first + k * then)."""
    grouping = resolve_grouping(grouping)
    keys = [(True, grouping.first), (False, grouping.then)]
    if short_groups:
        keys += [(True, n) for n in range(1, grouping.first)] + [(False, n) for n in range(1, grouping.then)]
    made = [vae_decoder_descriptor(vae, latent_height, latent_width, start, n, grouping, precision, batch=batch,
                                   clamp=clamp) for start, n in keys]
    return {d.name: d for d in made}


def vae_decoder_graphs(vae: CogVideoXVae, latent_height: int, latent_width: int,
                       grouping: Grouping | str = REFERENCE_GROUPING, precision: str | None = None, *,
                       batch: int = 1, short_groups: bool = False,
                       clamp: bool = True) -> dict[str, tuple[GraphDescriptor, VaeDecoderChunk]]:
    """name -> (descriptor, module) for a loaded VAE. The precision is the VAE's dtype; a `precision` that
    differs from it is an error (the module is not cast behind the caller's back)."""
    own = {dtype: name for name, dtype in PRECISIONS.items()}.get(vae.dtype)
    if own is None:
        raise ValueError(f"VAE dtype {vae.dtype} has no graph precision; available: {', '.join(PRECISIONS)}")
    if precision is not None and precision != own:
        raise ValueError(f"precision {precision!r} asked for, but the VAE is loaded in {own} ({vae.dtype}); "
                         f"load it in {PRECISIONS.get(precision, precision)}")
    descriptors = vae_decoder_descriptors(vae.config, latent_height, latent_width, grouping, own, batch=batch,
                                          short_groups=short_groups, clamp=clamp)
    return {name: (d, VaeDecoderChunk(vae, d.config["start"], clamp)) for name, d in descriptors.items()}


# ----------------------------------------------------------------------------------------------------
# Streaming through runners.


class ChunkedVaeDecoder(GroupedLatentBuffer):
    """`StreamingVaeDecoder` over stateless graphs: decodes a clip group by group through runners, feeding
    each group's caches to the next.

    `graphs` maps names to (descriptor, runner) for the grouping's graphs (`vae_decoder_descriptors`);
    `decode(chunk)` takes any number (>= 1) of latent frames (B, C, n, h, w) and returns the frames of the
    groups it completed, possibly none; `flush()` decodes the rest as a last group and starts a new clip.
    Equal to `StreamingVaeDecoder` with the same grouping up to the runners' arithmetic.
    """

    def __init__(self, graphs: Mapping[str, tuple[GraphDescriptor, Runner]],
                 grouping: Grouping | str = REFERENCE_GROUPING) -> None:
        self.grouping = resolve_grouping(grouping)
        self._graphs: dict[tuple[bool, int], tuple[GraphDescriptor, Runner]] = {}
        for name, (descriptor, runner) in graphs.items():
            config = descriptor.config
            if "start" not in config or "latent_frames" not in config:
                raise ValueError(f"graph {name!r} is not a VAE decoder group (no start / latent_frames in its "
                                 "config); build it with vae_decoder_descriptors")
            self._graphs[(config["start"], config["latent_frames"])] = (descriptor, runner)
        missing = [graph_name(s, n, self.grouping) for s, n in ((True, self.grouping.first),
                                                                (False, self.grouping.then))
                   if (s, n) not in self._graphs]
        if missing:
            raise ValueError(f"grouping {self.grouping} needs graphs {missing}; given: {', '.join(graphs)}")
        self._first = self._graphs[(True, self.grouping.first)][0]
        # every graph must continue the same clip: same latent batch/channels/size, same cache signature
        signature = self._signature(self._first)
        mismatched = [d.name for d, _ in self._graphs.values() if self._signature(d) != signature]
        if mismatched:
            raise ValueError(f"graphs {mismatched} differ from {self._first.name} in latent batch, channels, "
                             "size or caches; build all of them with one vae_decoder_descriptors call")
        self.reset()

    @staticmethod
    def _signature(descriptor: GraphDescriptor) -> tuple:
        shape = descriptor.shape(descriptor.inputs[0])
        return (shape[:2], shape[3:], descriptor.precision,
                tuple((s.name, descriptor.shape(s)) for s in descriptor.outputs[1:]))

    def reset(self) -> None:
        """Forget the caches and any buffered frames; the next frame starts a new clip."""
        self._caches: dict[str, torch.Tensor] | None = None
        self._reset_buffer()

    def _empty(self, like: torch.Tensor) -> torch.Tensor:
        batch, channels, _, height, width = self._first.shape(self._first.outputs[0])
        return like.new_zeros(batch, channels, 0, height, width)

    def _check(self, latents: torch.Tensor) -> torch.Tensor:
        spec = self._first.inputs[0]
        expected = self._first.shape(spec)
        if (not isinstance(latents, torch.Tensor) or latents.ndim != 5
                or latents.shape[:2] != expected[:2] or latents.shape[3:] != expected[3:] or latents.shape[2] < 1):
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise InputError(f"latents must be {expected[:2] + ('n',) + expected[3:]} (n >= 1) for these "
                             f"graphs, got {got}")
        return latents.to(self._first.dtype(spec))

    def _decode_group(self, group: torch.Tensor) -> torch.Tensor:
        start, size = self._caches is None, group.shape[2]
        if (start, size) not in self._graphs:
            raise ValueError(f"no graph for a {'first' if start else 'continuation'} group of {size} latent "
                             f"frames ({graph_name(start, size, self.grouping)}); export with short_groups=True "
                             f"or give clips of first + k * then frames")
        descriptor, runner = self._graphs[(start, size)]
        inputs = {LATENTS: group.contiguous(), **(self._caches or {})}
        outputs = runner(inputs)
        absent = [n for n in descriptor.output_names if n not in outputs]
        if absent:
            raise RuntimeError(f"runner of {descriptor.name} returned no {absent}")
        slots = len(descriptor.outputs) - 1
        self._caches = {cache_input_name(i): outputs[cache_output_name(i)] for i in range(slots)}
        self._groups_done += 1
        return outputs[FRAMES]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Take new latent frames (B, C, n, h, w); return the frames of every group completed (maybe none)."""
        return self._decode_ready(self._check(latents))

    def flush(self) -> torch.Tensor:
        """Decode the buffered frames (if any) as the clip's last group, then start a new clip."""
        try:
            if self._pending:
                return self._decode_group(torch.cat(self._pending, dim=2))
            if self._like is not None:
                return self._empty(self._like)
            spec = self._first.outputs[0]  # nothing was ever given
            batch, channels, _, height, width = self._first.shape(spec)
            return torch.zeros(batch, channels, 0, height, width, dtype=self._first.dtype(spec))
        finally:  # the clip ends even when its last group has no graph
            self.reset()

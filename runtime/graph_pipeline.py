"""The offline pipeline with every stage run by a backend (onnxruntime, tensorrt) from exported graphs.

Each adapter stands where the pipeline expects a torch module and calls the graph runners with the
descriptor's names (`runtime.backends`): `GraphDenoiser` for the `HalloDiT` (conditioning graph once per
clip, then the denoiser graph every step), `GraphReferenceNet`, `GraphVae` (encoder graphs; decoder chunk
graphs with the causal caches fed back), `GraphAudioEncoder` for the wav2vec2 model. The samplers, motion
frames, stitching and video writing stay the pipeline's own code, so only the graphs differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hallo_rt.engine.pipeline import Hallo3Pipeline


class GraphDenoiser:
    """Quacks like `HalloDiT` for the sampler: `config`, `dtype`, `device`, `__call__`."""

    def __init__(self, config, dtype: torch.dtype, device: torch.device, denoiser, conditioning=None):
        self.config, self.dtype, self.device = config, dtype, device
        self.denoiser, self.conditioning = denoiser, conditioning
        self._tokens_for: tuple | None = None  # (audio, face) the cached tokens were computed from
        self._tokens: dict = {}

    def _condition_tokens(self, audio: torch.Tensor, face: torch.Tensor) -> dict:
        # The sampler passes the same audio/face tensors at every step of a clip: project them once.
        if self._tokens_for is None or self._tokens_for[0] is not audio or self._tokens_for[1] is not face:
            self._tokens = self.conditioning({"audio_features": audio, "face": face})
            self._tokens_for = (audio, face)
        return self._tokens

    def __call__(self, latents, timestep, text_embeds, audio=None, face=None, ref_bank=None) -> torch.Tensor:
        cfg, B = self.config, latents.shape[0]
        inputs = {"latents": latents.to(self.dtype),
                  "timestep": torch.as_tensor(timestep, device=latents.device).float().expand(B).contiguous(),
                  "text_embeds": text_embeds.to(self.dtype).expand(B, -1, -1).contiguous()}
        if self.conditioning is not None:
            if audio is None:  # the unconditional input the model itself uses: zero features
                T = 4 * latents.shape[1] - 3
                audio = latents.new_zeros(B, T, cfg.audio_window, cfg.audio_layers, cfg.audio_dim, dtype=self.dtype)
            if face is None:
                face = latents.new_zeros(B, cfg.face_embed_dim, dtype=self.dtype)
            tokens = self._condition_tokens(audio.to(self.dtype), face.to(self.dtype).expand(B, -1).contiguous())
            inputs.update(tokens)
        if ref_bank is not None:
            inputs["ref_bank"] = ref_bank.to(self.dtype)
        return self.denoiser(inputs)["v"]


class GraphReferenceNet:
    def __init__(self, runner):
        self.runner = runner

    def __call__(self, ref_latent: torch.Tensor) -> torch.Tensor:
        return self.runner({"ref_latent": ref_latent})["ref_bank"]


class GraphVae:
    """`encode`/`decode` of `CogVideoXVae` through the encoder and decoder-chunk graphs."""

    def __init__(self, config, dtype, device, encoders: dict[int, object], decoder, decoder_graphs=None):
        self.config, self.dtype, self.device = config, dtype, device
        self.encoders, self.decoder = encoders, decoder
        self.decoder_graphs = decoder_graphs or {}

    def stream_decoder(self, grouping):
        """A new streaming decoder (its own caches) over the exported decoder-group graphs; a grouping the
        export has no graphs for is an error naming them (export with that grouping)."""
        from hallo_rt.export.vae_graphs import ChunkedVaeDecoder

        return ChunkedVaeDecoder(self.decoder_graphs, grouping)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None):
        T = frames.shape[2]
        if T not in self.encoders:
            raise ValueError(f"no VAE encoder graph for {T} frames; exported: {sorted(self.encoders)}")
        out = self.encoders[T]({"frames": frames.to(self.dtype)})
        mean, logvar = out["mean"], out["logvar"]
        if not sample:
            return mean
        # Same draw as CogVideoXVae.encode, so a seeded run consumes the generator identically.
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                            device=generator.device if generator is not None else mean.device)
        return mean + torch.exp(0.5 * logvar) * noise.to(mean.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """A whole clip (B, C, F, h, w) -> (B, 3, T, H, W), clamped (the graphs clamp, as `decode` does)."""
        self.decoder.reset()
        parts = [self.decoder.decode(latents.to(self.dtype)), self.decoder.flush()]
        return torch.cat([p for p in parts if p.shape[2]], dim=2)


class GraphAudioEncoder:
    """Stands for the wav2vec2 model inside `AudioFeatureExtractor`: `encoder(x, num_frames=F)`."""

    def __init__(self, config, dtype, device, runner):
        self.config, self.dtype, self.device, self.runner = config, dtype, device, runner

    def eval(self):
        return self

    def __call__(self, x: torch.Tensor, num_frames: int | None = None):
        if num_frames is None:
            raise ValueError("the audio encoder graph resamples to a frame count; pass num_frames")
        grid = torch.zeros(x.shape[0], num_frames, device=x.device)  # only its length is read
        hidden = self.runner({"waveform": x.to(self.dtype), "frame_grid": grid})["hidden_states"]
        return (None, *hidden.unbind(2))  # hidden_states[0] (dropped by the caller) is not exported


def read_manifest(onnx_dir: str | Path) -> dict:
    path = Path(onnx_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: export the model first (hallo-rt export --out {onnx_dir})")
    return json.loads(path.read_text())


_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
GRAPH_BACKENDS = ("onnxruntime", "tensorrt")


def cached_onnx_dir(pipeline, extractor, graphs: dict, *, quiet: bool = False) -> Path:
    """The export of this model in the artifact cache, made on first use. Keyed by the configs, weights
    digests, every descriptor and the library versions, so any change exports anew."""
    from hallo_rt.export.artifacts import default_cache_root, digest_json
    from hallo_rt.export.onnx_export import versions

    from .export_cmd import export_pipeline, model_sources

    sources = model_sources(pipeline, extractor, "")
    key = digest_json({"sources": {k: v for k, v in sources.items() if k != "model"},
                       "graphs": {n: d.compute_hash() for n, (d, _) in graphs.items()}, "versions": versions()})
    out = default_cache_root() / "onnx" / key[:32]
    if not (out / "manifest.json").is_file():
        if not quiet:
            print(f"exporting the model's graphs to {out} (first use)", flush=True)
        export_pipeline(pipeline, extractor, out, precision=_PRECISION[pipeline.dit.dtype], quiet=quiet)
    return out


def _artifacts(backend: str, artifacts_dir: Path, graphs: dict) -> dict[str, Path]:
    """Per graph, the file the backend loads, after checking the directory was made for these graphs."""
    if backend == "onnxruntime":
        manifest = read_manifest(artifacts_dir)
        entries = {name: (e["descriptor_hash"], artifacts_dir / e["onnx"]) for name, e in manifest["graphs"].items()}
    else:
        path = artifacts_dir / "plans.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: build plans first (hallo-rt build --onnx DIR --out "
                                    f"{artifacts_dir})")
        from hallo_rt.export.tensorrt_build import descriptor_from_dict

        plans = json.loads(path.read_text())["graphs"]
        entries = {name: (descriptor_from_dict(e["descriptor"]).compute_hash(), artifacts_dir / e["plan"])
                   for name, e in plans.items()}
    files = {}
    for name, (descriptor, _) in graphs.items():
        if name not in entries:
            raise ValueError(f"{artifacts_dir} has no {name} graph; re-export the model")
        recorded, file = entries[name]
        if recorded != descriptor.compute_hash():
            raise ValueError(f"{artifacts_dir}: the {name} graph was exported for a different model or settings "
                             "(descriptor hash differs); re-export it")
        files[name] = file
    return files


def graph_pipeline(pipeline: Hallo3Pipeline, extractor, backend: str, artifacts_dir: str | Path | None = None,
                   options: dict | None = None, quiet: bool = False):
    """`pipeline` and `extractor` with every stage run by `backend` from exported graphs. Returns
    (pipeline, extractor, backend_used): the loaded torch models provide configs, descriptors and (for
    onnxruntime without `artifacts_dir`) the export itself."""
    from hallo_rt.engine.audio_features import AudioFeatureExtractor
    from hallo_rt.export.graphs import model_graphs
    from hallo_rt.export.vae_graphs import ChunkedVaeDecoder

    from .backends import get_backend

    if backend not in GRAPH_BACKENDS:
        raise ValueError(f"graph backends are {GRAPH_BACKENDS}; got {backend!r}")
    runtime = get_backend(backend, **(options or {}))  # an unavailable backend fails here, before any export
    dit, vae = pipeline.dit, pipeline.vae
    graphs = model_graphs(dit, pipeline.reference_net, vae, extractor.encoder, precision=_PRECISION[dit.dtype])
    if artifacts_dir is None:
        if backend != "onnxruntime":
            raise ValueError("--backend tensorrt needs --artifacts DIR with plans (hallo-rt build)")
        artifacts_dir = cached_onnx_dir(pipeline, extractor, graphs, quiet=quiet)
    files = _artifacts(backend, Path(artifacts_dir), graphs)
    runners = {name: runtime.load(descriptor, files[name]) for name, (descriptor, _) in graphs.items()}
    cfg = dit.config
    denoiser = GraphDenoiser(cfg, dit.dtype, dit.device, runners["denoiser"], runners.get("conditioning"))
    encoders = {graphs[n][0].config["frames"]: runners[n] for n in graphs if n.startswith("vae_encoder_t")}
    decoder_graphs = {n: (graphs[n][0], runners[n]) for n in graphs if n.startswith("vae_decoder")}
    decoder = ChunkedVaeDecoder(decoder_graphs, "reference")
    graph_vae = GraphVae(vae.config, vae.dtype, vae.device, encoders, decoder, decoder_graphs)
    fused = Hallo3Pipeline(denoiser, GraphReferenceNet(runners["reference"]), graph_vae)
    encoder = extractor.encoder
    audio = GraphAudioEncoder(encoder.config, encoder.dtype, encoder.device, runners["audio_encoder"])
    graph_extractor = AudioFeatureExtractor(audio, extractor.sample_rate, extractor.fps, extractor.window,
                                            extractor.normalize)
    used = {"backend": backend, "artifacts": str(artifacts_dir),
            "graphs": {name: runner.backend_used for name, runner in runners.items()}}
    return fused, graph_extractor, used

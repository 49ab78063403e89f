"""The offline pipeline with every stage run by a backend (onnxruntime, tensorrt) from exported graphs.

Each adapter stands where the pipeline expects a torch module and calls the graph runners with the
descriptor's names (`runtime.backends`): `GraphDenoiser` for the `HalloDiT` (conditioning graph once per
clip, then the denoiser graph every step), `GraphReferenceNet`, `GraphVae` (encoder graphs; decoder chunk
graphs with the causal caches fed back), `GraphAudioEncoder` for the wav2vec2 model. The samplers, motion
frames, stitching and video writing stay the pipeline's own code, so only the graphs differ.

Graphs have their frame counts built in, so a graph pipeline is made for one chunk setting: the offline clip
(chunk=None), or a streaming session's chunk length and motion mode (`model_graphs(chunk_latents=, motion=)`).
`backend_used["chunk"]` records which; `check_session_chunk` refuses a session asking for another.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from hallo_rt.engine.chunks import ChunkSettings
from hallo_rt.engine.pipeline import Hallo3Pipeline
from hallo_rt.engine.vae import Grouping, resolve_grouping


class GraphDenoiser:
    """Quacks like `HalloDiT` for the sampler: `config`, `dtype`, `device`, `__call__`.

    `denoisers` maps latent frames -> denoiser-step runner, `conditionings` audio feature frames ->
    conditioning runner: a latent-motion stream's first chunk takes 4F - 3 audio frames, the next 4F."""

    def __init__(self, config, dtype: torch.dtype, device: torch.device, denoisers: Mapping[int, object],
                 conditionings: Mapping[int, object] | None = None):
        self.config, self.dtype, self.device = config, dtype, device
        self.denoisers, self.conditionings = dict(denoisers), dict(conditionings or {})
        self._tokens_for: tuple | None = None  # (audio, face, B, F) as passed, that the tokens came from
        self._tokens: dict = {}

    def _condition_tokens(self, audio: torch.Tensor | None, face: torch.Tensor | None,
                          latents: torch.Tensor) -> dict:
        # The sampler passes the same audio/face tensors at every step of a chunk: project them once.
        B, F = latents.shape[:2]
        key = (audio, face, B, F)
        if self._tokens_for is not None and all(a is b for a, b in zip(key[:2], self._tokens_for[:2])) \
                and key[2:] == self._tokens_for[2:]:
            return self._tokens
        cfg = self.config
        if audio is None:  # the unconditional input the model itself uses: zero features of 4F - 3 frames
            audio = latents.new_zeros(B, 4 * F - 3, cfg.audio_window, cfg.audio_layers, cfg.audio_dim,
                                      dtype=self.dtype)
        if face is None:
            face = latents.new_zeros(B, cfg.face_embed_dim, dtype=self.dtype)
        T = audio.shape[1]
        if T not in self.conditionings:
            raise ValueError(f"no conditioning graph for {T} audio frames; exported for "
                             f"{sorted(self.conditionings)} (export the graphs for this chunk length and motion)")
        self._tokens = self.conditionings[T]({"audio_features": audio.to(self.dtype),
                                              "face": face.to(self.dtype).expand(B, -1).contiguous()})
        self._tokens_for = key
        return self._tokens

    def __call__(self, latents, timestep, text_embeds, audio=None, face=None, ref_bank=None) -> torch.Tensor:
        B, F = latents.shape[:2]
        if F not in self.denoisers:
            raise ValueError(f"no denoiser graph for {F} latent frames; exported for {sorted(self.denoisers)} "
                             "(export the graphs for this chunk length)")
        inputs = {"latents": latents.to(self.dtype),
                  "timestep": torch.as_tensor(timestep, device=latents.device).float().expand(B).contiguous(),
                  "text_embeds": text_embeds.to(self.dtype).expand(B, -1, -1).contiguous()}
        if self.conditionings:
            inputs.update(self._condition_tokens(audio, face, latents))
        if ref_bank is not None:
            inputs["ref_bank"] = ref_bank.to(self.dtype)
        return self.denoisers[F](inputs)["v"]


class GraphReferenceNet:
    def __init__(self, runner):
        self.runner = runner

    def __call__(self, ref_latent: torch.Tensor) -> torch.Tensor:
        return self.runner({"ref_latent": ref_latent})["ref_bank"]


class GraphVae:
    """`encode`/`decode`/`stream_decoder` of `CogVideoXVae` through the encoder and decoder-group graphs.

    `encoders` maps video frames -> encoder runner; `decoder_graphs` name -> (descriptor, runner) for the
    decoder groups of one or more groupings (each descriptor's config names its grouping)."""

    def __init__(self, config, dtype, device, encoders: dict[int, object], decoder_graphs: Mapping[str, tuple]):
        self.config, self.dtype, self.device = config, dtype, device
        self.encoders, self.decoder_graphs = encoders, dict(decoder_graphs)

    def stream_decoder(self, grouping: Grouping | str = "reference"):
        """A new streaming decoder (its own caches) over the exported decoder-group graphs; a grouping the
        export has no graphs for is an error naming the groupings it has."""
        from hallo_rt.export.vae_graphs import ChunkedVaeDecoder

        grouping = resolve_grouping(grouping)
        graphs = {name: graph for name, graph in self.decoder_graphs.items()
                  if Grouping(**graph[0].config["grouping"]) == grouping}
        if not graphs:
            made = sorted({tuple(d.config["grouping"].values()) for d, _ in self.decoder_graphs.values()})
            raise ValueError(f"no VAE decoder graphs for {grouping}; exported groupings (first, then): {made}")
        return ChunkedVaeDecoder(graphs, grouping)

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
        """A whole clip (B, C, F, h, w) -> (B, 3, T, H, W), clamped (the graphs clamp, as `decode` does), with
        the clip grouping `CogVideoXVae.decode` uses."""
        decoder = self.stream_decoder(Grouping.for_clip(latents.shape[2]))
        parts = [decoder.decode(latents.to(self.dtype)), decoder.flush()]
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
    """The export of `graphs` (from `model_graphs`) in the artifact cache, made on first use. Keyed by the
    configs, weights digests, every descriptor and the library versions, so any change (another chunk
    length or motion mode included) makes a new entry.

    Each graph is exported once into its own entry (`onnx/graphs/<key>`, keyed by its descriptor, the
    weights and the versions) that the set's manifest points to, so graph sets that share graphs (a
    session's chunk graphs and the offline clip's share the reference, audio and VAE encoder graphs) export
    each of them once."""
    from hallo_rt.export.artifacts import default_cache_root, digest_json
    from hallo_rt.export.onnx_export import MANIFEST, export_all, versions

    from .export_cmd import model_sources

    sources = model_sources(pipeline, extractor, "")
    made_from = {"sources": {k: v for k, v in sources.items() if k != "model"}, "versions": versions()}
    key = digest_json({**made_from, "graphs": {n: d.compute_hash() for n, (d, _) in graphs.items()}})
    root = default_cache_root() / "onnx"
    out = root / key[:32]
    if (out / MANIFEST).is_file():
        return out

    def progress(name: str, seconds: float) -> None:
        if not quiet:
            print(f"exported {name}.onnx in {seconds:.1f} s", file=sys.stderr, flush=True)

    if not quiet:
        print(f"exporting the model's graphs to {out} (first use)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {}
    for name, graph in graphs.items():
        graph_dir = root / "graphs" / digest_json({**made_from, "graph": graph[0].compute_hash()})[:32]
        if not (graph_dir / MANIFEST).is_file():
            export_all({name: graph}, graph_dir, sources=sources, progress=progress)
        one = json.loads((graph_dir / MANIFEST).read_text())
        # the set's manifest points at the graph's own entry (ONNX refuses hard-linked external data)
        entry = {**one["graphs"][name], "onnx": os.path.relpath(graph_dir / one["graphs"][name]["onnx"], out)}
        manifest = {**one, "graphs": {**manifest.get("graphs", {}), name: entry}}
    tmp = out / (MANIFEST + ".tmp")  # the manifest last, and whole: it marks the entry complete
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(out / MANIFEST)
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
            raise ValueError(f"{artifacts_dir} has no {name} graph (it has {', '.join(sorted(entries))}): export "
                             "the graphs of the sessions' chunk length and motion mode (hallo-rt export "
                             "--chunk-latents F --motion pixel|latent; then hallo-rt build for tensorrt), or open the "
                             "engine with the chunk_latents/motion the graphs were exported for")
        recorded, file = entries[name]
        if recorded != descriptor.compute_hash():
            raise ValueError(f"{artifacts_dir}: the {name} graph was exported for a different model or settings "
                             "(descriptor hash differs); re-export it")
        files[name] = file
    return files


def _as_chunk(chunk: ChunkSettings | tuple[int, str] | None) -> ChunkSettings | None:
    """`chunk` as ChunkSettings: None (the offline clip), ChunkSettings, or (chunk_latents, motion)."""
    if chunk is None or isinstance(chunk, ChunkSettings):
        return chunk
    if isinstance(chunk, tuple) and len(chunk) == 2:
        return ChunkSettings(chunk_latents=chunk[0], motion=chunk[1])
    raise TypeError(f"chunk must be None, ChunkSettings or (chunk_latents, motion), got {chunk!r}")


def _chunk_record(chunk_latents: int, motion: str, motion_frames: int) -> dict:
    """What a graph set was cut for, as `backend_used["chunk"]` records it."""
    return {"chunk_latents": chunk_latents, "motion": motion, "motion_frames": motion_frames}


def check_session_chunk(backend_used: dict, chunk: ChunkSettings) -> None:
    """Raise ValueError unless the graphs behind `backend_used` (from `graph_pipeline`) were cut for `chunk`'s
    length, motion mode and motion frames: their frame counts are fixed at export."""
    made = backend_used.get("chunk")
    if made is None:
        raise ValueError(f"backend {backend_used.get('backend')!r}: backend_used records no 'chunk' the graphs were "
                         "exported for; build the pipeline with graph_pipeline")
    asked = _chunk_record(chunk.chunk_latents, chunk.motion, chunk.motion_frames)
    if asked != made:
        def show(record: dict) -> str:
            return ", ".join(f"{k}={v!r}" for k, v in record.items())

        raise ValueError(f"backend {backend_used['backend']!r} runs graphs exported for {show(made)}; this session "
                         f"asks for {show(asked)}. Open the Engine with these settings (it exports graphs for its "
                         f"defaults), or use backend='torch'")


def graph_pipeline(pipeline: Hallo3Pipeline, extractor, backend: str, artifacts_dir: str | Path | None = None,
                   options: dict | None = None, quiet: bool = False,
                   chunk: ChunkSettings | tuple[int, str] | None = None):
    """`pipeline` and `extractor` with every stage run by `backend` from exported graphs. Returns
    (pipeline, extractor, backend_used): the loaded torch models provide configs, descriptors and (for
    onnxruntime without `artifacts_dir`) the export itself, cached per graph set.

    chunk: None for the offline pipeline's clip graphs; ChunkSettings or (chunk_latents, motion) for the
    graphs of streaming sessions with that chunk length and motion mode. `options` go to `get_backend`
    (onnxruntime: `quantize="int8"`, threads, providers); both are recorded in `backend_used`."""
    from hallo_rt.engine.audio_features import AudioFeatureExtractor
    from hallo_rt.export.graphs import model_graphs

    from .backends import get_backend

    if backend not in GRAPH_BACKENDS:
        raise ValueError(f"graph backends are {GRAPH_BACKENDS}; got {backend!r}")
    chunk = _as_chunk(chunk)
    runtime = get_backend(backend, **(options or {}))  # an unavailable backend fails here, before any export
    dit, vae = pipeline.dit, pipeline.vae
    if chunk is None:  # the offline clip: pixel motion over the config's clip, model_graphs' defaults
        record, cut = _chunk_record(dit.config.latent_frames, "pixel", ChunkSettings.motion_frames), {}
    else:
        record = cut = _chunk_record(chunk.chunk_latents, chunk.motion, chunk.motion_frames)
    graphs = model_graphs(dit, pipeline.reference_net, vae, extractor.encoder, precision=_PRECISION[dit.dtype],
                          **cut)
    if artifacts_dir is None:
        if backend != "onnxruntime":
            raise ValueError("--backend tensorrt needs --artifacts DIR with plans (hallo-rt build)")
        artifacts_dir = cached_onnx_dir(pipeline, extractor, graphs, quiet=quiet)
    files = _artifacts(backend, Path(artifacts_dir), graphs)
    runners = {name: runtime.load(descriptor, files[name]) for name, (descriptor, _) in graphs.items()}

    def by(prefix: str, key: str) -> dict:
        return {graphs[n][0].config[key]: runners[n] for n in graphs if n.startswith(prefix)}

    # conditioning graphs are keyed by their audio length: the input's second dim
    conditionings = {graphs[n][0].inputs[0].shape[1]: runners[n] for n in graphs if n.startswith("conditioning")}
    denoiser = GraphDenoiser(dit.config, dit.dtype, dit.device, by("denoiser", "frames"), conditionings)
    decoder_graphs = {n: (graphs[n][0], runners[n]) for n in graphs if n.startswith("vae_decoder")}
    graph_vae = GraphVae(vae.config, vae.dtype, vae.device, by("vae_encoder_t", "frames"), decoder_graphs)
    fused = Hallo3Pipeline(denoiser, GraphReferenceNet(runners["reference"]), graph_vae)
    encoder = extractor.encoder
    audio = GraphAudioEncoder(encoder.config, encoder.dtype, encoder.device, runners["audio_encoder"])
    graph_extractor = AudioFeatureExtractor(audio, extractor.sample_rate, extractor.fps, extractor.window,
                                            extractor.normalize)
    used = {"backend": backend, "artifacts": str(artifacts_dir), "options": dict(options or {}),
            "chunk": record,
            "graphs": {name: runner.backend_used for name, runner in runners.items()}}
    return fused, graph_extractor, used

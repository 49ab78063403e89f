"""The SDK: `hallo_rt.Engine` loads a model once; `engine.session(image)` opens a stream.

    engine = hallo_rt.Engine(model="demo", backend="torch", device="cpu")
    session = engine.session("portrait.jpg", seed=0)
    session.push_audio(pcm, 16000)          # any number of times, any rate, int16 or float32
    session.end_audio()
    for frame in session:                   # or: async for frame in session.frames()
        frame.image, frame.pts, frame.index, frame.audio
"""

from __future__ import annotations

import dataclasses
import os
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hallo_rt.engine.chunks import ChunkedGenerator, ChunkSettings
from hallo_rt.engine.sampling import SamplerConfig

from .frame import AUDIO_RATE, VIDEO_FPS
from .session import Session, StreamSettings

BACKENDS = ("torch", "torch-compile", "onnxruntime", "tensorrt")
"""What `Engine(backend=...)` accepts: eager PyTorch, PyTorch with the denoiser compiled (TorchInductor), or
exported graphs on ONNX Runtime / TensorRT."""

STREAM_DEFAULTS = {"steps": 4, "cfg": 1.0, "chunk_latents": 3, "motion": "pixel"}
"""Few-step, guidance-free sampling on 3-latent-frame chunks (7 new frames per pixel-mode chunk)."""


class Engine:
    """A loaded model (denoiser, reference network, VAE, audio encoder) on one backend and device, shared by
    its sessions. Keyword settings (`steps`, `cfg`, `chunk_latents`, `motion`, `sampler`, and any
    `StreamSettings` field such as `offline_features`, `backpressure`, `idle`) are the sessions' defaults;
    `session(...)` can override them."""

    audio_rate = AUDIO_RATE
    fps = VIDEO_FPS

    def __init__(self, model: str | os.PathLike = "demo", backend: str = "torch", device: str = "cpu", *,
                 dtype: str = "fp32", kernels: str = "none", artifacts: str | os.PathLike | None = None,
                 vae: str | os.PathLike | None = None, audio_encoder: str | os.PathLike | None = None,
                 backend_options: dict | None = None, **settings: Any) -> None:
        from hallo_rt.engine.pipeline import load_pipeline

        from .cli import apply_kernels_arg
        from .devices import resolve_device

        from hallo_rt.engine.models import model_defaults, uses_face_embedding

        resolved = resolve_device(device)
        # a model folder's own settings (the demo: what it was distilled for) under the caller's
        settings = {**model_defaults(model), **settings}
        _check_settings(settings)  # before the (slow) load
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
        if backend_options and backend not in ("onnxruntime", "tensorrt"):
            raise ValueError(f"backend_options {sorted(backend_options)} apply to the graph backends "
                             f"(onnxruntime, tensorrt); the {backend} backend takes none")
        pipeline, extractor = load_pipeline(model, vae=vae, audio_encoder=audio_encoder, dtype=dtype,
                                            device=resolved)
        pipeline.dit = apply_kernels_arg(pipeline.dit, kernels)
        pipeline.reference_net = apply_kernels_arg(pipeline.reference_net, kernels)
        backend_used: dict = {"backend": "torch", "device": str(resolved), "kernels": kernels}
        if backend == "torch-compile":
            # the denoiser through TorchInductor, compiled on the first step of each chunk shape (part of the
            # cold start); the VAE stays eager (its CPU route is `small_cpu_convolutions`)
            pipeline.dit = torch.compile(pipeline.dit, dynamic=False)
            backend_used.update(backend="torch-compile", compiled=["denoiser"])
        elif backend != "torch":
            from .graph_pipeline import graph_pipeline

            if kernels != "none":
                raise ValueError("kernels apply to the torch backend; exported graphs carry their own ops")
            # graphs have their frame counts built in: cut them for the sessions' default chunk settings;
            # backend_options go to get_backend (onnxruntime: {"quantize": "int8"}, threads, providers)
            chunk = resolve_settings({**STREAM_DEFAULTS, **settings})[0]
            pipeline, extractor, backend_used = graph_pipeline(pipeline, extractor, backend, artifacts,
                                                               options=backend_options, quiet=True, chunk=chunk)
        self._setup(pipeline, extractor, backend_used, settings, name=str(model))
        self.face_embedding_used = uses_face_embedding(model)

    @classmethod
    def from_pipeline(cls, pipeline, extractor, backend_used: dict | None = None, **settings: Any) -> "Engine":
        """An engine around already-loaded components (a `Hallo3Pipeline` and its `AudioFeatureExtractor`)."""
        engine = cls.__new__(cls)
        _check_settings(settings)
        engine._setup(pipeline, extractor, backend_used or {"backend": "torch", "device": str(pipeline.dit.device)},
                      settings, name=pipeline.dit.config.name)
        return engine

    def _setup(self, pipeline, extractor, backend_used: dict, settings: dict, name: str) -> None:
        self.pipeline, self.extractor, self.backend_used, self.model_name = pipeline, extractor, backend_used, name
        self.device = torch.device(pipeline.dit.device)
        self.defaults = {**STREAM_DEFAULTS, **settings}
        self._denoise_lock, self._decode_lock = threading.Lock(), threading.Lock()
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._native = None
        self.face_embedding_used = True

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the generated frames before the square-image crop."""
        return self.pipeline.clip_size

    def settings_for(self, **overrides: Any) -> tuple[ChunkSettings, SamplerConfig, StreamSettings]:
        """The (chunk, sampler, stream) settings a session with these overrides uses."""
        _check_settings(overrides)
        return resolve_settings({**self.defaults, **overrides})

    def session(self, image, face_embedding=None, text_embeds=None, seed: int = 0,
                face_mask: torch.Tensor | None = None, **overrides: Any) -> Session:
        """Open a stream for a reference `image` (a path, a PIL image or an (H, W, 3) uint8 array).

        face_embedding: (512,) ArcFace embedding (None: zeros, with a warning); text_embeds: (text_len,
        text_dim) T5 states (None: zeros, the unconditional text); face_mask: (1, 1, H, W) in {0, 1} at the
        image's size (None: the whole image). Computes what never changes in the stream here: the
        reference bank (as per-layer K/V), the first conditioning latent, face and text inputs."""
        from hallo_rt.engine.reference_image import prepare_reference

        chunk, sampler, stream = self.settings_for(**overrides)
        cfg = self.pipeline.dit.config
        from .graph_pipeline import GRAPH_BACKENDS, check_session_chunk

        if self.backend_used.get("backend") in GRAPH_BACKENDS:
            check_session_chunk(self.backend_used, chunk)  # the graphs have their chunk's frame counts built in
        array = _as_image(image)
        face = _as_tensor(face_embedding, (cfg.face_embed_dim,), "face_embedding")
        if face is None:
            if self.face_embedding_used:  # the demo was trained on zeros: nothing to warn about
                warnings.warn("no face embedding given: using zeros (identity suffers)", stacklevel=2)
            face = torch.zeros(cfg.face_embed_dim)
        text = _as_tensor(text_embeds, (cfg.text_len, cfg.text_dim), "text_embeds")
        text = torch.zeros(cfg.text_len, cfg.text_dim) if text is None else text
        reference = prepare_reference(array, *self.pipeline.clip_size, face_mask=face_mask)
        generator = torch.Generator().manual_seed(int(seed))
        with self._denoise_lock:
            stream_state = ChunkedGenerator(self.pipeline, reference, face, text, chunk, sampler, generator)
        session = Session(self, stream_state, self.extractor, reference.crop, stream)
        self._sessions.add(session)
        return session

    def _forget(self, session: Session) -> None:
        self._sessions.discard(session)

    def _native_frames(self):
        """The CUDA frame converter when built (`CMakeLists.txt`), else None (the torch ops do the same)."""
        if self._native is None:
            try:
                from .native_frames import NativeFrameConverter

                self._native = NativeFrameConverter.load()
            except Exception:  # noqa: BLE001 - reported in `describe()`; the torch path is bit-identical
                self._native = False
        return self._native or None

    def describe(self) -> dict:
        """What runs: backend, device, model, defaults (for benchmark output)."""
        frame_path = "cpu" if self.device.type == "cpu" else "native-cuda" if self._native_frames() else "torch-cuda"
        return {"backend_used": self.backend_used, "device": str(self.device), "model": self.model_name,
                "frame_size": list(self.frame_size), "frame_conversion": frame_path, "defaults": self.defaults}

    def close(self) -> None:
        """Close every open session."""
        for session in list(self._sessions):
            session.close()


_CHUNK_EXTRAS = ("motion_frames", "mask_rate", "motion_latents", "motion_noise", "motion_anchor")
"""ChunkSettings fields a flat settings dict may carry besides chunk_latents and motion."""

_KNOWN = ({"steps", "cfg", "sampler", "chunk_latents", "motion", *_CHUNK_EXTRAS}
          | {f.name for f in dataclasses.fields(StreamSettings)})


def _check_settings(settings: dict) -> None:
    """Known names, and values that make valid settings (checked before any model loads)."""
    unknown = sorted(set(settings) - _KNOWN)
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")
    resolve_settings({**STREAM_DEFAULTS, **settings})


def resolve_settings(merged: dict) -> tuple[ChunkSettings, SamplerConfig, StreamSettings]:
    """Flat keyword settings -> (ChunkSettings, SamplerConfig, StreamSettings); bad values raise ValueError."""
    merged = dict(merged)
    chunk = ChunkSettings(chunk_latents=merged.pop("chunk_latents"), motion=merged.pop("motion"),
                          **{k: merged.pop(k) for k in _CHUNK_EXTRAS if k in merged})
    sampler = SamplerConfig(kind=merged.pop("sampler", "dpmpp2m_sde"), steps=merged.pop("steps"),
                            cfg_scale=merged.pop("cfg"))
    return chunk, sampler, StreamSettings(**merged)


def _as_image(image) -> np.ndarray:
    from hallo_rt.engine.validation import InputError

    if isinstance(image, (str, os.PathLike)):
        from .media import read_image

        return read_image(Path(image))
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            raise InputError(f"image array must be (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}")
        return image
    raise InputError(f"image must be a path, a PIL image or an (H, W, 3) uint8 array, got {type(image).__name__}")


def _as_tensor(value, shape: tuple[int, ...], name: str) -> torch.Tensor | None:
    from hallo_rt.engine.validation import InputError

    if value is None:
        return None
    tensor = torch.as_tensor(np.asarray(value, dtype=np.float32))
    if tensor.numel() != int(np.prod(shape)) or tensor.shape[-len(shape):] != shape:
        raise InputError(f"{name} must have shape {shape} (or (1, ...)), got {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise InputError(f"{name} has non-finite values")
    return tensor.reshape(shape)

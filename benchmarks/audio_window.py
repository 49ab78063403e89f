"""How far streaming audio features (bounded windows, fixed lookahead) are from whole-file features, what
they cost, and how good the push-side resampler is.

    .venv/bin/python benchmarks/audio_window.py [--out benchmarks/results/audio-window.json]
                                                [--seconds 20] [--base-seconds 8] [--skip-base]

Audio: a few English sentences synthesised with espeak-ng when it is on PATH (22.05 kHz, brought to 16 kHz
by `PcmConverter`), else `examples/speech.wav`. For each (context, lookahead) setting and normalisation the
audio is streamed in 20 ms pieces through `StreamingAudioFeatures`, frames taken as soon as they are
available, and compared frame by frame with `AudioFeatureExtractor(waveform)` (whole file, no clip padding):
cosine similarity of each frame's (window, layers, dim) features (mean and min over frames), mean cosine per
layer, max abs error. Encoder cost is the wall time of the `take` calls per second of audio on this machine
(one torch thread by default), and the seconds of audio the encoder sees per second of stream.

Both encoders have random weights (`tiny` and the wav2vec2-base architecture, seed 0): untrained networks
attend everywhere, so these deviations are an upper-bound-style stress test, not the trained model's figures.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import time
import wave

import numpy as np
import torch

from hallo_rt.benchmarks.environment import emit, machine, versions

from hallo_rt import __version__
from hallo_rt.engine.audio_features import AudioFeatureExtractor
from hallo_rt.runtime.audio_input import PcmConverter
from hallo_rt.runtime.media import read_audio
from hallo_rt.runtime.streaming_features import DEFAULT_BLOCK_FRAMES, StreamingAudioFeatures

TEXT = (
    "The weather is calm and clear across the valley. Early this morning a light wind came down from the hills, "
    "and by noon the river was bright with sun. Farmers walked out to check the fields, children ran along the "
    "road, and an old dog slept in the shade of the barn. Tomorrow, they say, the rain will finally return."
)

# (context_frames, lookahead_frames, block_frames, normalization): lookahead swept at 2 s of context, context
# swept at 160 ms of lookahead, then the block length; each with both normalisations.
SETTINGS = [(c, la, b, n) for c, la, b in [(50, 0, 4), (50, 2, 4), (50, 4, 4), (50, 8, 4), (50, 16, 4), (0, 4, 4),
                                           (12, 4, 4), (25, 4, 4), (100, 4, 4), (50, 4, 1), (50, 4, 16)]
            for n in ("running", "window")]
# wav2vec2-base costs ~0.2 s per 2.5 s window on 2 CPU cores: fewer settings, shorter audio.
BASE_SETTINGS = [(25, 4, 4, "running"), (50, 4, 4, "running"), (50, 4, 4, "window"), (50, 8, 4, "running"),
                 (50, 4, 16, "running")]
PIECE = 320  # 20 ms pushes, a typical network/microphone packet


def speech(seconds: float) -> tuple[np.ndarray, str]:
    """(float32 16 kHz mono, where it came from), at most `seconds` long."""
    if shutil.which("espeak-ng"):
        wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", TEXT],
                             check=True, capture_output=True).stdout
        with wave.open(io.BytesIO(wav)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        converter = PcmConverter()
        audio = np.concatenate([converter.push(pcm, rate), converter.flush()])
        source = f"espeak-ng en-us 150 wpm at {rate} Hz, PcmConverter -> 16 kHz"
    else:
        audio, source = read_audio("examples/speech.wav"), "examples/speech.wav"
    return audio[: int(seconds * 16000)], source


def stream_features(extractor, audio: np.ndarray, context: int, lookahead: int, normalization: str,
                    block: int = DEFAULT_BLOCK_FRAMES) -> tuple[torch.Tensor, float, StreamingAudioFeatures]:
    """(features of every frame, seconds spent in take, the stream object), pushing PIECE samples at a time."""
    stream = StreamingAudioFeatures(extractor, lookahead_frames=lookahead, context_frames=context,
                                    block_frames=block, normalization=normalization)
    parts, spent = [], 0.0
    for start in range(0, audio.size, PIECE):
        stream.append(audio[start:start + PIECE])
        ready = stream.available_frames - stream.frames_taken
        if ready:
            t = time.perf_counter()
            parts.append(stream.take(ready))
            spent += time.perf_counter() - t
    stream.end()
    t = time.perf_counter()
    parts.append(stream.take(stream.available_frames - stream.frames_taken))
    spent += time.perf_counter() - t
    return torch.cat(parts), spent, stream


def compare(streamed: torch.Tensor, whole: torch.Tensor) -> dict:
    """Cosine similarity per frame over (window, layers, dim), per layer, and max abs error."""
    a, b = streamed.double(), whole.double()
    per_frame = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)  # (F,)
    per_layer = torch.nn.functional.cosine_similarity(a.transpose(1, 2).flatten(2), b.transpose(1, 2).flatten(2),
                                                      dim=2).mean(0)  # (layers,)
    return {
        "cos_mean": round(float(per_frame.mean()), 5),
        "cos_min": round(float(per_frame.min()), 5),
        "cos_mean_per_layer": [round(float(c), 4) for c in per_layer],
        "max_abs_error": round(float((a - b).abs().max()), 5),
        "max_abs_whole": round(float(b.abs().max()), 5),
    }


def measure_model(name: str, extractor, audio: np.ndarray, settings) -> dict:
    t = time.perf_counter()
    whole = extractor(audio)
    whole_s = time.perf_counter() - t
    seconds = audio.size / 16000
    rows = []
    for context, lookahead, block, norm in settings:
        streamed, spent, stream = stream_features(extractor, audio, context, lookahead, norm, block)
        assert streamed.shape == whole.shape, (streamed.shape, whole.shape)
        window_frames = context + 2 * stream.radius + block + lookahead
        rows.append({"context_frames": context, "lookahead_frames": lookahead, "block_frames": block,
                     "normalization": norm, "lookahead_ms": stream.lookahead_ms, "context_ms": context * 40,
                     "window_frames": window_frames, "audio_encoded_per_audio_s": window_frames / block,
                     "encoder_s_per_audio_s": round(spent / seconds, 4), **compare(streamed, whole)})
        print(f"  {name} C={context} L={lookahead} B={block} {norm}: cos mean {rows[-1]['cos_mean']} "
              f"min {rows[-1]['cos_min']}", flush=True)
    # The same comparison between two offline runs: the first half's frames, from the first half alone and
    # from the whole file. Whole-file features of a frame move this much when the utterance is longer.
    half = (audio.size // 2) // 640 * 640
    offline_half = compare(extractor(audio[:half]), whole[: half // 640])
    return {"audio_seconds": round(seconds, 3), "frames": whole.shape[0],
            "whole_file_encoder_s_per_audio_s": round(whole_s / seconds, 4), "rows": rows,
            "first_half_alone_vs_whole": offline_half}


def resampler_quality() -> list[dict]:
    """SNR of a 1 kHz sine (0.5 amplitude) against the exact 16 kHz sine; gain at 3 and 6 kHz; level
    of a 12 kHz tone (4 kHz alias after downsampling) relative to the input; throughput."""
    rows = []
    for rate in (8000, 22050, 44100, 48000):
        t = np.arange(rate * 4) / rate
        row = {"rate": rate}
        for name, freq in (("snr_1khz_db", 1000.0), ("gain_3khz_db", 3000.0), ("gain_6khz_db", 6000.0),
                           ("alias_12khz_db", 12000.0)):
            if freq >= rate / 2:
                continue
            converter = PcmConverter()
            start = time.perf_counter()
            y = np.concatenate([converter.push((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate),
                                converter.flush()]).astype(np.float64)
            elapsed = time.perf_counter() - start
            n = np.arange(y.size)
            core = slice(2000, y.size - 2000)  # away from the stream's ends, where the filter sees zeros
            if name == "snr_1khz_db":
                ref = 0.5 * np.sin(2 * np.pi * freq * n / 16000)
                err = y[core] - ref[core]
                row[name] = round(10 * np.log10(np.mean(ref[core] ** 2) / np.mean(err ** 2)), 1)
                row["realtime_factor"] = round(4.0 / elapsed, 1)
            else:
                row[name] = round(20 * np.log10(np.sqrt(2 * np.mean(y[core] ** 2)) / 0.5), 2)
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    lines = ["| model | context | lookahead | block | norm | cos mean | cos min | max abs err (max abs) | "
             "audio encoded / s | encoder s / audio s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for model, result in report["models"].items():
        for r in result["rows"]:
            lines.append(
                f"| {model} | {r['context_frames']} fr ({r['context_ms']} ms) | {r['lookahead_frames']} fr "
                f"({r['lookahead_ms']:.0f} ms in all) | {r['block_frames']} | {r['normalization']} | "
                f"{r['cos_mean']:.4f} | {r['cos_min']:.4f} | {r['max_abs_error']:.3f} ({r['max_abs_whole']:.2f}) | "
                f"{r['audio_encoded_per_audio_s']:.2f} s | {r['encoder_s_per_audio_s']:.3f} |")
        h = result["first_half_alone_vs_whole"]
        lines.append(f"| {model} | offline: first half alone vs whole file | | | | {h['cos_mean']:.4f} | "
                     f"{h['cos_min']:.4f} | {h['max_abs_error']:.3f} | | |")
        lines.append(f"| {model} | whole file | | | | 1 | 1 | 0 | 1 s | "
                     f"{result['whole_file_encoder_s_per_audio_s']:.3f} |")
    lines += ["", "| input rate | SNR 1 kHz | gain 3 kHz | gain 6 kHz | 12 kHz tone after | x real time |",
              "|---|---|---|---|---|---|"]
    for r in report["resampler"]:
        cells = [f"{r[k]} dB" if k in r else "n/a" for k in ("snr_1khz_db", "gain_3khz_db", "gain_6khz_db",
                                                              "alias_12khz_db")]
        lines.append(f"| {r['rate']} | {' | '.join(cells)} | {r['realtime_factor']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/audio-window.json")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio length for the tiny encoder")
    parser.add_argument("--base-seconds", type=float, default=6.0, help="audio length for wav2vec2-base")
    parser.add_argument("--skip-base", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: reproducible costs on a shared machine; the encoder runs are small)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    audio, source = speech(args.seconds)
    report = {
        "benchmark": "audio_window", "hallo_rt": __version__, "machine": machine(),
        "versions": versions(numpy=np.__version__), "backend_used": "torch", "device": "cpu",
        "audio": source, "piece_samples": PIECE,
        "weights": "random (seed 0) for both encoders: untrained, not the released wav2vec2-base-960h",
        "models": {},
    }
    print("tiny", flush=True)
    report["models"]["tiny"] = measure_model("tiny", AudioFeatureExtractor.from_checkpoint("tiny"), audio, SETTINGS)
    if not args.skip_base:
        print("wav2vec2-base (random weights)", flush=True)
        base = AudioFeatureExtractor.from_checkpoint("wav2vec2-base")
        report["models"]["wav2vec2-base (random)"] = measure_model(
            "base", base, audio[: int(args.base_seconds * 16000)], BASE_SETTINGS)
    report["resampler"] = resampler_quality()
    emit(report, args.out)
    print(markdown(report))


if __name__ == "__main__":
    main()

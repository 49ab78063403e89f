"""`hallo-rt bench`: the metric arithmetic (exact, on hand-made timings), the report's keys and consistency on
a short real run, the PNGs, and the errors for unavailable backends and bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hallo_rt.benchmarks import stream_metrics as sm
from hallo_rt.benchmarks.stream_bench import BenchSettings, _frame_audio_times, synthetic_speech

HALLO = Path(sys.executable).parent / "hallo-rt"


def test_percentile_matches_numpy():
    values = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4]
    for q in (0, 10, 50, 90, 99, 100):
        assert sm.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert sm.percentile([], 50) is None
    with pytest.raises(ValueError, match="in \\[0, 100\\]"):
        sm.percentile(values, 101)


def test_deadlines_and_viewer_on_hand_made_arrivals():
    fps = 25.0
    # frames 0-3 at t=10 (one chunk), frames 4-7 at 10.30: frame 4 is due at 10 + 0.1 + 4/25 = 10.26 -> late;
    # frames 5, 6, 7 are due at 10.30, 10.34, 10.38 -> on time
    arrivals = [10.0] * 4 + [10.30] * 4
    assert sm.deadline_attainment(arrivals, buffer_s=0.1, fps=fps) == pytest.approx(7 / 8)
    assert sm.deadline_attainment(arrivals, buffer_s=0.2, fps=fps) == 1.0
    assert sm.deadline_attainment(arrivals, buffer_s=0.1, fps=fps, after_s=0.2) == pytest.approx(3 / 3)
    viewer = sm.simulate_viewer(arrivals, buffer_s=0.1, fps=fps)
    assert viewer["underruns"] == 1 and viewer["stall_s"] == pytest.approx(0.04)
    # after the stall the viewer's clock moved by 0.04 s: a frame that is late only on the old clock is fine
    assert sm.simulate_viewer(arrivals + [10.46], buffer_s=0.1, fps=fps)["underruns"] == 1
    assert sm.simulate_viewer(arrivals + [10.47], buffer_s=0.1, fps=fps)["underruns"] == 2
    with pytest.raises(ValueError, match="buffer_s"):
        sm.deadline_attainment(arrivals, buffer_s=-1)


def test_chunk_arrivals_interarrivals_and_overlap():
    arrivals = [1.0, 1.0, 1.0, 1.5, 1.5, 2.25]
    assert sm.chunk_arrivals(arrivals, [3, 0, 2, 1]) == [1.0, 1.5, 2.25]
    assert sm.interarrivals([1.0, 1.5, 2.25]) == [0.5, 0.75]
    assert sm.union_length([(0, 1), (0.5, 2), (3, 4), (3.2, 3.4)]) == pytest.approx(3.0)
    events = [{"stage": "denoise", "start": 0.0, "end": 1.0}, {"stage": "denoise_step", "start": 0.0, "end": 0.5,
                                                                 "step": 0},
              {"stage": "denoise_step", "start": 0.5, "end": 1.0, "step": 1},
              {"stage": "decode", "start": 0.5, "end": 2.0}]
    summary = sm.stage_summary(events, wall_s=2.0)
    assert summary["busy_sum_s"] == pytest.approx(2.5) and summary["busy_union_s"] == pytest.approx(2.0)
    assert summary["overlap_fraction"] == pytest.approx(0.2)
    assert summary["denoise_step_ms"] == {"0": pytest.approx(500), "1": pytest.approx(500)}
    assert summary["stages"]["decode"]["share_of_wall"] == pytest.approx(0.75)


def test_frame_audio_times_follow_the_pushes():
    pushes = [(320, 1.0), (640, 1.02), (960, 1.04), (1280, 1.06), (1500, 1.08)]
    assert _frame_audio_times(pushes, 3) == [1.02, 1.06, 1.08]  # the last frame waits for the final push


def test_synthetic_speech_is_deterministic_and_bounded():
    a, b = synthetic_speech(2.0, seed=3), synthetic_speech(2.0, seed=3)
    assert a.dtype == np.float32 and a.size == 32000 and np.array_equal(a, b)
    assert 0.05 < np.abs(a).max() <= 1.0 and not np.array_equal(a, synthetic_speech(2.0, seed=4))
    frames = np.abs(a[:32000].reshape(50, 640)).mean(axis=1)
    assert frames.min() < 0.1 * frames.max()  # pauses between syllables


def test_settings_validate_and_hash():
    assert BenchSettings().compute_hash() == BenchSettings().compute_hash()
    assert BenchSettings(steps=2).compute_hash() != BenchSettings().compute_hash()
    with pytest.raises(ValueError, match="unknown backend 'cuda-magic'"):
        BenchSettings(backend="cuda-magic")
    with pytest.raises(ValueError, match="seconds must be positive"):
        BenchSettings(seconds=0)


def _bench(tmp_path, *extra, timeout=600):
    return subprocess.run([str(HALLO), "bench", "--out-dir", str(tmp_path), "--quiet", *extra],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_bench_cli_report_and_plots(tmp_path):
    result = _bench(tmp_path, "--seconds", "1.6", "--json", "--steps", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads((tmp_path / "bench.json").read_text())
    for key in ("rtf", "fps", "ttff_cold_s", "ttff_warm_s", "deadline_attainment", "interarrival_p99_s", "stages",
                "backend_used", "device", "machine", "versions", "config_hash"):
        assert key in report, key
    assert report["backend_used"]["backend"] == "torch" and report["device"] == "cpu"
    assert report["config"]["steps"] == 2
    for phase in ("throughput", "live"):
        assert report["phases"][phase]["frames"] == 40  # 1.6 s at 25 fps, every frame delivered
    assert report["stages"]["denoise_step"]["calls"] == 2 * report["stages"]["denoise"]["calls"]
    assert report["stages"]["denoise_setup"]["calls"] == report["stages"]["denoise"]["calls"]
    assert report["stages"]["audio_features"]["frames"] == 40 and report["stages"]["convert"]["frames"] == 40
    assert set(report["denoise_step_ms"]) == {"0", "1"}
    assert {"audio_features", "decode", "convert", "encode"} <= set(report["stages"])
    assert report["ttff_cold_s"] > report["engine_construct_s"] > 0
    assert 0 < report["deadline_attainment"] <= 1 and report["rtf"] > 0
    for name in ("timeline", "latency_cdf"):
        assert Path(report["plots"][name]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _check_readme_section(report, tmp_path)


def _check_readme_section(report: dict, tmp_path: Path) -> None:
    """benchmarks/README.md's generated section: the report's own numbers, targets judged against them, and
    nothing outside the markers touched (a second render replaces the first)."""
    from hallo_rt.benchmarks.report import BEGIN, END, render, write_readme

    section = render(report)
    assert section.startswith(BEGIN) and section.endswith(END)
    assert f"| real-time factor (input as fast as possible; video s per wall s) | {report['rtf']:.2f}x |" in section
    met = "yes" if report["ttff_warm_s"] <= 1.0 else "**no**"
    assert f"| warm time to first frame <= 1.0 s | {report['ttff_warm_s']:.3f} | {met} |" in section
    assert "| denoiser step >= 1.5x faster than diffusers eager | - | not measured |" in section  # no --compare
    readme = tmp_path / "README.md"
    readme.write_text(f"# Benchmarks\n\nintro\n\n{BEGIN}\nold numbers\n{END}\n\n## Older results\nkept\n")
    write_readme(report, readme)
    write_readme(report, readme)
    text = readme.read_text()
    assert text.count(BEGIN) == 1 and "old numbers" not in text
    assert text.startswith("# Benchmarks\n\nintro\n\n") and text.endswith("\n\n## Older results\nkept\n")


@pytest.mark.parametrize("argv,message", [
    (["--backend", "tensorrt"], "backend 'tensorrt' is not available here: TensorRT"),
    (["--device", "cuda"], "device 'cuda' is not available"),
    (["--seconds", "0"], "seconds must be positive"),
    (["--audio", "/nonexistent.wav"], "--audio /nonexistent.wav: no such file"),
])
def test_bench_cli_errors_before_loading(tmp_path, argv, message):
    result = _bench(tmp_path, *argv, timeout=120)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "bench.json").exists()


@pytest.mark.slow
def test_torch_compile_backend_streams_like_eager():
    """`backend="torch-compile"` compiles the denoiser (TorchInductor): same frames as eager within one uint8
    level (fused kernels reassociate fp32 sums), recorded in backend_used."""
    import warnings

    from hallo_rt import Engine
    from hallo_rt.benchmarks.stream_bench import synthetic_portrait

    frames = {}
    for backend in ("torch", "torch-compile"):
        engine = Engine("tiny", backend=backend, chunk_latents=2, motion="latent", steps=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no face embedding
            with engine.session(synthetic_portrait(), seed=1, idle=False) as session:
                session.push_audio(synthetic_speech(0.6, seed=2), 16000)
                session.end_audio()
                frames[backend] = np.stack([f.image for f in session]).astype(int)
        assert engine.backend_used["backend"] == backend
    assert frames["torch"].shape[0] == 15
    assert np.abs(frames["torch"] - frames["torch-compile"]).max() <= 1
    with pytest.raises(ValueError, match="backend_options .* the torch-compile backend takes none"):
        Engine("tiny", backend="torch-compile", backend_options={"quantize": "int8"})
    with pytest.raises(ValueError, match="unknown backend 'jax'; available: torch, torch-compile, onnxruntime"):
        Engine("tiny", backend="jax")

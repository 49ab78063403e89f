"""ONNX export of every graph of the `tiny` model: ONNX Runtime equals torch per graph (fp32 within 1e-4),
the graph summaries match the recorded goldens, and `hallo-rt export` writes the files and manifest."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from hallo_rt.engine.pipeline import load_pipeline
from hallo_rt.export.graphs import model_graphs
from hallo_rt.export.onnx_export import export_all

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("HALLO_RT_UPDATE_GOLDEN") == "1"  # rewrite the goldens after an intended change


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pipeline, extractor = load_pipeline("tiny")
    graphs = model_graphs(pipeline.dit, pipeline.reference_net, pipeline.vae, extractor.encoder)
    out = tmp_path_factory.mktemp("onnx")
    manifest = export_all(graphs, out, sources={"model": "tiny"})
    return graphs, out, manifest


def _run_ort(path, inputs):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in inputs.items()})


def test_every_graph_matches_torch_in_onnxruntime(exported):
    graphs, out, _ = exported
    for name, (descriptor, module) in graphs.items():
        for which in (("min", "opt") if descriptor.dims else ("opt",)):
            inputs = descriptor.sample_inputs(which, seed=1)
            with torch.no_grad():
                want = module(*inputs.values())
            want = want if isinstance(want, tuple) else (want,)
            got = _run_ort(out / f"{name}.onnx", inputs)
            assert len(got) == len(want) == len(descriptor.outputs), name
            for g, w, spec in zip(got, want, descriptor.outputs):
                assert g.shape == tuple(w.shape), (name, spec.name)
                np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=1e-4, err_msg=f"{name}.{spec.name}")


def test_graph_summaries_match_the_goldens(exported):
    """An accidental graph change (new ops, renamed or reshaped I/O) fails here. After an intended change:
    HALLO_RT_UPDATE_GOLDEN=1 pytest tests/test_onnx_export.py, and review the diff of tests/golden/."""
    _, _, manifest = exported
    for name, entry in manifest["graphs"].items():
        path = GOLDEN / f"onnx-tiny-{name}.json"
        if UPDATE:
            path.write_text(json.dumps(entry["summary"], indent=1, sort_keys=True) + "\n")
        assert path.is_file(), f"no golden for {name}: run with HALLO_RT_UPDATE_GOLDEN=1"
        assert entry["summary"] == json.loads(path.read_text()), f"graph {name} changed; see its golden"


def test_manifest_records_what_the_graphs_came_from(exported):
    graphs, out, manifest = exported
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["graphs"].keys() == graphs.keys()
    for name, (descriptor, _) in graphs.items():
        entry = on_disk["graphs"][name]
        assert (out / entry["onnx"]).is_file()
        assert entry["descriptor_hash"] == descriptor.compute_hash()
        assert entry["descriptor"]["inputs"][0]["name"] == descriptor.input_names[0]
    assert {"torch", "onnx"} <= on_disk["versions"].keys()


def test_export_cli_writes_graphs_and_manifest(tmp_path, capsys):
    from hallo_rt.runtime.cli import main

    assert main(["export", "--model", "tiny", "--out", str(tmp_path / "x"), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert sorted(manifest["graphs"]) == summary["graphs"]
    assert len(manifest["weights_digest"]["dit"]) == 64 and manifest["config_hash"]
    (tmp_path / "file").write_text("")
    assert main(["export", "--model", "tiny", "--out", str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_whole_generate_through_onnxruntime_matches_torch_per_frame(exported):
    """Two clips (motion frames through the 3-frame encoder graph), 2 sampler steps, CFG on: the raw uint8
    frames from ONNX Runtime differ from torch's by at most one level, on a tiny share of values."""
    from hallo_rt.engine.reference_image import prepare_reference
    from hallo_rt.engine.sampling import SamplerConfig
    from hallo_rt.runtime.graph_pipeline import graph_pipeline
    from hallo_rt.runtime.media import read_audio, read_image

    _, out, _ = exported
    pipeline, extractor = load_pipeline("tiny")
    graph, graph_extractor, used = graph_pipeline(pipeline, extractor, "onnxruntime", out)
    assert {g["providers"][0] for g in used["graphs"].values()} == {"CPUExecutionProvider"}
    waveform = read_audio(str(Path(__file__).parents[1] / "examples" / "speech.wav"))[: 16000 * 5 // 2]
    reference = prepare_reference(read_image(str(Path(__file__).parents[1] / "examples" / "portrait.jpg")),
                                  *pipeline.clip_size)
    cfg = pipeline.dit.config
    face = torch.randn(1, cfg.face_embed_dim, generator=torch.Generator().manual_seed(0))
    text = torch.zeros(1, cfg.text_len, cfg.text_dim)
    videos = []
    for p, e in ((pipeline, extractor), (graph, graph_extractor)):
        features = e(waveform, clip_length=p.clip_frames)
        clips = list(p.generate(reference, features, face, text, SamplerConfig(steps=2),
                                generator=torch.Generator().manual_seed(0), num_frames=62))
        videos.append(torch.cat(clips))
    assert len(clips) == 2 and videos[0].shape == videos[1].shape == (62, *pipeline.clip_size, 3)
    diff = (videos[0].int() - videos[1].int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01


def test_generate_cli_backend_errors(exported, tmp_path, capsys):
    from hallo_rt.runtime.cli import main

    _, out, _ = exported
    examples = Path(__file__).parents[1] / "examples"
    base = ["generate", "--image", str(examples / "portrait.jpg"), "--audio", str(examples / "speech.wav"),
            "--out", str(tmp_path / "v.mp4"), "--steps", "1", "--quiet"]
    assert main(base + ["--backend", "tensorrt", "--artifacts", str(out)]) == 2
    assert "backend 'tensorrt' is not available here" in capsys.readouterr().err
    stale = tmp_path / "stale"
    stale.mkdir()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["graphs"]["denoiser"]["descriptor_hash"] = "0" * 64
    (stale / "manifest.json").write_text(json.dumps(manifest))
    assert main(base + ["--backend", "onnxruntime", "--artifacts", str(stale)]) == 2
    assert "exported for a different model" in capsys.readouterr().err

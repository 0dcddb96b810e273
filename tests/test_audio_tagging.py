"""Issue 4: audio tagging with the Audio Spectrogram Transformer, torch-free.

Tiny ASTForAudioClassification models of two configurations (single-label softmax and
multi-label sigmoid; different mel bins, frame counts and patch strides), saved with their
ASTFeatureExtractor, are exported and compared with Hugging Face (extractor -> model ->
softmax/sigmoid) on real audio files: a 16 kHz mono WAV, a 44.1 kHz stereo file and a long
clip cut into windows. Then the CLI, bad inputs and the built-in model.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vlmedge.errors import InputError, UsageError, VlmedgeError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
BUILTIN_DIR = ROOT / "exporters" / "builtin" / "models" / "sounds-ast"
SR = 16000
ATOL = 1e-4

# name -> (model config overrides, feature extractor overrides, classifier weight scale).
# The scales spread the top-5 scores >= 1e-3 apart without saturating them: a larger softmax
# scale puts everything but the top label at ~1e-10, a larger sigmoid one ties labels at 1.0.
CONFIGS = {
    "single-softmax": (
        dict(num_mel_bins=32, max_length=100, frequency_stride=10, time_stride=10, num_labels=12,
             problem_type="single_label_classification"),
        dict(num_mel_bins=32, max_length=100),
        1.0,
    ),
    "multi-sigmoid": (
        dict(num_mel_bins=48, max_length=64, frequency_stride=16, time_stride=8, num_labels=9,
             problem_type="multi_label_classification"),
        dict(num_mel_bins=48, max_length=64, mean=-5.5, std=3.25),
        2.0,
    ),
}


def tiny_ast(name: str):
    """A tiny AST of the real class, seeded, its classifier scaled so that the top-5 scores
    are far enough apart that their order is not decided by float noise."""
    model_cfg, _, scale = CONFIGS[name]
    torch.manual_seed(0)
    labels = {i: f"{name}-tag{i}" for i in range(model_cfg["num_labels"])}
    config = transformers.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    patch_size=16, initializer_range=0.2, id2label=labels,
                                    label2id={v: k for k, v in labels.items()}, **model_cfg)
    model = transformers.ASTForAudioClassification(config).eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.startswith("classifier.dense"):
                param.mul_(scale)
    return model


def tone_clip(seconds: float, sr: int = SR, seed: int = 0, channels: int = 1) -> np.ndarray:
    """Gliding harmonic tone + a few bursts + noise: (samples,) or (samples, channels) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    f = 300 + 1200 * t / max(seconds, 1e-9)
    phase = 2 * np.pi * np.cumsum(f) / sr
    wave = 0.25 * np.sin(phase) + 0.1 * np.sin(3 * phase)
    wave *= 0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t) ** 2
    for start in rng.uniform(0, seconds, size=3):
        i = int(start * sr)
        wave[i:i + sr // 20] += 0.3 * rng.standard_normal(len(wave[i:i + sr // 20]))
    out = [np.clip(wave + 0.02 * rng.standard_normal(t.size), -1, 1)]
    for c in range(1, channels):  # other channels: the same tone, delayed and quieter, different noise
        out.append(np.clip(0.6 * np.roll(wave, 37 * c) + 0.03 * rng.standard_normal(t.size), -1, 1))
    stacked = np.stack(out, axis=1).astype(np.float32)
    return stacked[:, 0] if channels == 1 else stacked


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    made = {}

    def make(name):
        if name not in made:
            folder = tmp_path_factory.mktemp(f"hf-ast-{name}")
            tiny_ast(name).save_pretrained(folder)
            transformers.ASTFeatureExtractor(**CONFIGS[name][1]).save_pretrained(folder)
            made[name] = folder
        return made[name]

    return make


@pytest.fixture(scope="module")
def exported(hf_dir, tmp_path_factory):
    import vlmedge

    torch.set_num_threads(2)
    made = {}

    def make(name):
        if name not in made:
            out = tmp_path_factory.mktemp(f"artifact-ast-{name}") / "artifact"
            vlmedge.export(str(hf_dir(name)), out)
            made[name] = out
        return made[name]

    return make


@pytest.fixture(scope="module")
def hf_reference(hf_dir):
    """name -> function(list of 16 kHz waves) -> (N, labels) HF probabilities."""
    cache = {}

    def get(name):
        if name not in cache:
            folder = hf_dir(name)
            extractor = transformers.ASTFeatureExtractor.from_pretrained(folder)
            model = transformers.ASTForAudioClassification.from_pretrained(folder).eval()
            multi = model.config.problem_type == "multi_label_classification"

            def run(waves):
                feats = extractor(list(waves), sampling_rate=SR, return_tensors="pt")
                with torch.no_grad():
                    logits = model(**feats).logits
                return (logits.sigmoid() if multi else logits.softmax(-1)).numpy()

            cache[name] = run
        return cache[name]

    return get


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    files = {
        "short": folder / "short-16k-mono.wav",
        "stereo": folder / "stereo-44k.wav",
        "long": folder / "long-16k-mono.flac",
    }
    sf.write(files["short"], tone_clip(0.6, seed=1), SR, subtype="PCM_16")
    sf.write(files["stereo"], tone_clip(1.8, sr=44100, seed=2, channels=2), 44100, subtype="PCM_16")
    sf.write(files["long"], tone_clip(3.0, seed=3), SR, subtype="PCM_16")
    return files


def read_mono_16k(path) -> np.ndarray:
    """The file as HF users read it: soundfile, then mean over channels."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    assert sr == SR
    return data.mean(axis=1).astype(np.float32)


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- parity with Hugging Face -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_short_wav_matches_hugging_face(name, exported, hf_reference, audio_files):
    import vlmedge

    tagger = vlmedge.load(exported(name))
    assert tagger.task == "audio-classification"
    expected = hf_reference(name)([read_mono_16k(audio_files["short"])])[0]
    got = tagger.probabilities(audio_files["short"])[0]
    np.testing.assert_allclose(got, expected, atol=ATOL)
    assert cosine(got, expected) > 0.99999
    order = list(np.argsort(-expected, kind="stable")[:5])
    assert np.all(np.abs(np.diff(expected[order])) > ATOL), "test model's top-5 is too close to call"
    assert expected[order[-1]] > 1e-3 and expected[order[0]] < 1 - 1e-3, "test model's scores are saturated"

    result = tagger.tag(str(audio_files["short"]), top_k=5)
    assert [t.index for t in result.tags] == order
    assert [t.label for t in result.tags] == [f"{name}-tag{i}" for i in order]
    assert len(result.windows) == 1 and result.windows[0].start == 0.0
    assert result.duration == pytest.approx(0.6)
    assert result.windows[0].end == pytest.approx(0.6)
    if name == "single-softmax":
        assert got.sum() == pytest.approx(1.0, abs=1e-5)

    # the same clip as bytes and as an int16 array gives the same answer
    data = audio_files["short"].read_bytes()
    pcm, _ = sf.read(io.BytesIO(data), dtype="int16")
    batch = tagger.tag([data, pcm], sample_rate=SR)
    for clip in batch:
        assert [t.index for t in clip.tags] == order
        np.testing.assert_allclose([t.score for t in clip.tags], expected[order], atol=ATOL)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_stereo_44k_file_windows_and_aggregate(name, exported, hf_reference, audio_files):
    """A 44.1 kHz stereo file is downmixed and resampled; each window equals HF on that window."""
    import vlmedge
    from vlmedge.preprocess.audio import load_audio, resample, split_windows

    tagger = vlmedge.load(exported(name))
    result = tagger.tag(audio_files["stereo"], top_k=None)
    assert result.duration == pytest.approx(1.8)
    wave, rate = load_audio(audio_files["stereo"])
    assert rate == 44100
    wave16 = resample(wave, rate, SR)
    segments = split_windows(wave16, tagger.spec)
    assert len(segments) >= 2 and len(result.windows) == len(segments)
    expected = hf_reference(name)([seg for _, _, seg in segments])
    for window, (start, end, _), row in zip(result.windows, segments, expected):
        assert (window.start, window.end) == pytest.approx((start, end))
        scores = np.zeros_like(row)
        scores[[t.index for t in window.tags]] = [t.score for t in window.tags]
        np.testing.assert_allclose(scores, row, atol=ATOL)
    np.testing.assert_allclose(tagger.probabilities(audio_files["stereo"], aggregate="max")[0], expected.max(0),
                               atol=ATOL)
    np.testing.assert_allclose(tagger.probabilities(audio_files["stereo"], aggregate="mean")[0], expected.mean(0),
                               atol=ATOL)
    # by default a multi-label (sigmoid) model keeps a tag heard in any window (max); a softmax model's clip
    # scores stay a distribution (mean: the max of each label summed to up to one per window)
    default = expected.max(0) if tagger.activation == "sigmoid" else expected.mean(0)
    assert tagger.default_aggregate == ("max" if tagger.activation == "sigmoid" else "mean")
    np.testing.assert_allclose(tagger.probabilities(audio_files["stereo"])[0], default, atol=ATOL)
    clip_scores = [t.score for t in result.tags]
    assert clip_scores == sorted(clip_scores, reverse=True)
    np.testing.assert_allclose(sorted(clip_scores, reverse=True), np.sort(default)[::-1], atol=ATOL)
    if tagger.activation == "softmax":
        assert sum(clip_scores) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_long_clip_per_window_scores_match_hugging_face(name, exported, hf_reference, audio_files):
    """A 3 s clip with an explicit hop: window times tile the clip, each window's scores equal
    HF on exactly those samples, and mean/max aggregate them. A small batch size makes the
    windows run in several chunks."""
    import vlmedge

    tagger = vlmedge.load(exported(name), batch_size=3)
    assert tagger.batch_size == 3
    hop = 0.25
    raw = read_mono_16k(audio_files["long"])
    result = tagger.tag(audio_files["long"], top_k=3, window_hop=hop, aggregate="mean")
    spans, scores = tagger.window_probabilities(audio_files["long"], window_hop=hop)[0]
    window = tagger.spec.window_samples
    assert len(result.windows) == len(spans) > 3
    starts = np.round(spans[:, 0] * SR).astype(int)
    assert starts[0] == 0 and starts[-1] + window == raw.size
    assert np.all(np.diff(starts)[:-1] == round(hop * SR)) and 0 < np.diff(starts)[-1] <= round(hop * SR)
    expected = hf_reference(name)([raw[s:s + window] for s in starts])
    np.testing.assert_allclose(scores, expected, atol=ATOL)
    worst = max(1 - cosine(a, b) for a, b in zip(scores, expected))
    assert worst < 1e-5
    for w, row in zip(result.windows, expected):
        assert [t.index for t in w.tags] == list(np.argsort(-row, kind="stable")[:3])
    mean = expected.mean(0)
    assert [t.index for t in result.tags] == list(np.argsort(-mean, kind="stable")[:3])
    np.testing.assert_allclose([t.score for t in result.tags], np.sort(mean)[::-1][:3], atol=ATOL)

    threshold = float(np.sort(mean)[::-1][1])  # keeps exactly the top two clip-level tags
    filtered = tagger.tag(audio_files["long"], top_k=None, window_hop=hop, aggregate="mean", threshold=threshold)
    assert len(filtered.tags) == 2
    assert all(t.score >= threshold for w in filtered.windows for t in w.tags)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_manifest_records_audio_spec_activation_and_parity(name, exported, hf_dir):
    from vlmedge.artifact import Artifact
    from vlmedge.check import check_artifact
    from vlmedge.exporters.samples import sample_audio_files

    artifact = Artifact.open(exported(name))
    m = artifact.manifest
    assert m["task"] == "audio-classification"
    assert m["postprocess"]["activation"] == ("sigmoid" if name == "multi-sigmoid" else "softmax")
    audio = m["preprocess"]["audio"]
    assert (audio["num_mel_bins"], audio["max_length"]) == (CONFIGS[name][1]["num_mel_bins"],
                                                            CONFIGS[name][1]["max_length"])
    (inputs,) = m["graphs"]["model"]["inputs"]
    assert inputs["name"] == "input_values" and inputs["shape"][1:] == [audio["max_length"], audio["num_mel_bins"]]
    assert isinstance(inputs["shape"][0], str)  # dynamic batch
    samples = {e["path"] for e in artifact.files if e["role"] == "sample"}
    bundled = sample_audio_files()
    assert len(bundled) >= 2 and {f"samples/{p.name}" for p in bundled} <= samples
    (entry,) = artifact.model_entries()
    report = entry["parity"]
    assert report["passed"] and report["samples"] >= len(bundled) + 4
    logits = report["outputs"]["logits"]
    assert logits["cosine_min"] >= 0.99999 and logits["max_abs"] <= 1e-3 and logits["top1"] == 1.0
    assert all(r["passed"] for r in check_artifact(exported(name)))


def test_tagging_runs_without_torch(exported, audio_files):
    """The runtime side (load, decode, resample, fbank, session, postprocess) imports no torch."""
    import subprocess
    import sys

    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
import vlmedge
tags = vlmedge.load({str(exported("multi-sigmoid"))!r}).tag({str(audio_files["stereo"])!r}, top_k=2)
assert len(tags.tags) == 2 and len(tags.windows) > 1
assert not any(m.split(".")[0] in ("torch", "transformers") for m in sys.modules)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_predict_table_and_json(exported, audio_files):
    from typer.testing import CliRunner

    import vlmedge
    from vlmedge.cli import app

    art = str(exported("multi-sigmoid"))
    runner = CliRunner()
    table = runner.invoke(app, ["predict", art, str(audio_files["short"]), str(audio_files["long"]), "--top-k", "3"])
    assert table.exit_code == 0, table.output
    assert "multi-sigmoid-tag" in table.output and "windows" in table.output

    raw = runner.invoke(app, ["predict", art, str(audio_files["long"]), "--json", "--window-hop", "0.5",
                              "--aggregate", "mean", "--top-k", "2"])
    assert raw.exit_code == 0, raw.output
    rows = json.loads(raw.output)
    assert len(rows) == 1 and rows[0]["input"] == str(audio_files["long"])
    assert len(rows[0]["predictions"]) == 2 and {"label", "score"} <= set(rows[0]["predictions"][0])
    assert len(rows[0]["windows"]) > 2 and rows[0]["windows"][1]["start"] == pytest.approx(0.5)
    assert all(len(w["predictions"]) == 2 for w in rows[0]["windows"])

    bad = runner.invoke(app, ["predict", art, str(audio_files["short"]), "--aggregate", "median"])
    # a usage error (exit 2) whose one line names the flag and its choices
    assert bad.exit_code == 2 and "--aggregate must be max or mean" in bad.output
    hop = runner.invoke(app, ["predict", art, str(audio_files["short"]), "--window-hop", "0"])
    assert hop.exit_code == 2 and "window_hop=0.0 must be a number of seconds from" in hop.output

    # --threshold keeps the tags scoring at least it, per clip and per window, as tag(threshold=) does
    scores = [p["score"] for p in rows[0]["predictions"]]
    cut = (scores[0] + scores[1]) / 2
    kept = runner.invoke(app, ["predict", art, str(audio_files["long"]), "--json", "--window-hop", "0.5",
                               "--aggregate", "mean", "--top-k", "2", "--threshold", str(cut)])
    assert kept.exit_code == 0, kept.output
    expected = vlmedge.load(art).tag(str(audio_files["long"]), top_k=2, window_hop=0.5, aggregate="mean", threshold=cut)
    assert [p["label"] for p in json.loads(kept.output)[0]["predictions"]] == [t.label for t in expected.tags]
    assert len(expected.tags) == 1
    none = runner.invoke(app, ["predict", art, str(audio_files["short"]), "--threshold", "1"])
    assert none.exit_code == 0 and "(none at or above the threshold)" in none.output


# -- bad input -----------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(exported, audio_files, tmp_path):
    import vlmedge

    tagger = vlmedge.load(exported("single-softmax"))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage" + bytes(64))
    good = tone_clip(0.3)
    bad_calls = {
        "0-byte file": lambda: tagger.tag(empty),
        "corrupt header": lambda: tagger.tag(corrupt),
        "corrupt bytes": lambda: tagger.tag(corrupt.read_bytes()),
        "missing file": lambda: tagger.tag(tmp_path / "nope.wav"),
        "empty array": lambda: tagger.tag(np.zeros(0, np.float32), sample_rate=SR),
        "NaN samples": lambda: tagger.tag(np.array([0.1, np.nan] * 800, np.float32), sample_rate=SR),
        "inf samples": lambda: tagger.tag(np.array([0.1, np.inf] * 800, np.float32), sample_rate=SR),
        "int array without rate": lambda: tagger.tag((good * 3000).astype(np.int16)),
        "sample rate 0": lambda: tagger.tag(good, sample_rate=0),
        "sample rate 10 MHz": lambda: tagger.tag(good, sample_rate=10_000_000),
        "3-D array": lambda: tagger.tag(np.zeros((2, 800, 2), np.float32), sample_rate=SR),
        "list of floats": lambda: tagger.tag([0.1, 0.2, 0.3], sample_rate=SR),
        "empty list": lambda: tagger.tag([]),
        "dict": lambda: tagger.tag({"wave": good}),
        "dict without its rate": lambda: tagger.tag({"raw": good}),
        "dict and another rate": lambda: tagger.tag({"raw": good, "sampling_rate": SR}, sample_rate=8000),
        "bad clip in a list": lambda: tagger.tag([audio_files["short"], np.zeros(0, np.float32)], sample_rate=SR),
        "top_k 0": lambda: tagger.tag(good, sample_rate=SR, top_k=0),
        "top_k float": lambda: tagger.tag(good, sample_rate=SR, top_k=2.5),
        "top_k bool": lambda: tagger.tag(good, sample_rate=SR, top_k=True),
        "aggregate": lambda: tagger.tag(good, sample_rate=SR, aggregate="median"),
        "aggregate probabilities": lambda: tagger.probabilities(good, sample_rate=SR, aggregate="sum"),
        "window_hop 0": lambda: tagger.tag(good, sample_rate=SR, window_hop=0),
        "window_hop negative": lambda: tagger.tag(good, sample_rate=SR, window_hop=-1.0),
        "window_hop nan": lambda: tagger.tag(good, sample_rate=SR, window_hop=float("nan")),
        "window_hop longer than window": lambda: tagger.tag(good, sample_rate=SR, window_hop=60.0),
        "window_hop string": lambda: tagger.tag(good, sample_rate=SR, window_hop="1"),
        "threshold": lambda: tagger.tag(good, sample_rate=SR, threshold=1.5),
        "sample_rate for files only": lambda: tagger.tag(audio_files["short"], sample_rate=8000),  # was ignored
    }
    for what, call in bad_calls.items():
        with pytest.raises(VlmedgeError) as info:
            call()
        option = what.startswith(("top_k", "aggregate", "window_hop", "threshold"))  # a value outside its choices
        assert isinstance(info.value, UsageError if option else InputError), what
        assert str(info.value).strip(), what
    assert "clip 1" in str(pytest.raises(InputError, bad_calls["bad clip in a list"]).value)
    # transformers' pipeline input, {"raw": array, "sampling_rate": rate}, is the array with its rate
    assert tagger.tag({"raw": good, "sampling_rate": SR}, top_k=None) == tagger.tag(good, sample_rate=SR, top_k=None)
    assert tagger.tag([{"array": good, "sampling_rate": SR}], top_k=2) == tagger.tag([good], sample_rate=SR, top_k=2)


def test_clip_shorter_than_one_frame_is_an_input_error_everywhere(exported, audio_files, tmp_path):
    """Kaldi makes no frame of a clip under 400 samples and the extractor raises on it; the
    Python API, CLI predict and bulk refuse it, naming its length (no score of silence)."""
    import vlmedge
    from typer.testing import CliRunner

    from vlmedge.bulk.inputs import collect
    from vlmedge.bulk.job import make_job
    from vlmedge.bulk.local import run_local
    from vlmedge.cli import app

    art = exported("single-softmax")
    tiny = tone_clip(0.002)  # 32 samples
    with pytest.raises(ValueError):
        transformers.ASTFeatureExtractor(**CONFIGS["single-softmax"][1])(tiny, sampling_rate=SR)
    message = r"lasts 2 ms, shorter than one 25 ms frame; pass a clip of at least 25 ms"
    with pytest.raises(InputError, match=message):
        vlmedge.load(art).tag(tiny, sample_rate=SR)
    # at another rate, the clip's own length (its count at 16 kHz read as 398 samples of 199)
    with pytest.raises(InputError, match=r"lasts 24\.9 ms, shorter than one 25 ms frame"):
        vlmedge.load(art).tag(tone_clip(199 / 8000, sr=8000), sample_rate=8000)
    sf.write(tmp_path / "tiny.wav", tiny, SR, subtype="FLOAT")
    predicted = CliRunner().invoke(app, ["predict", str(art), str(audio_files["short"]), str(tmp_path / "tiny.wav")])
    assert predicted.exit_code == 1 and "shorter than one 25 ms frame" in predicted.output
    assert "tiny.wav: The audio clip lasts 2 ms" in " ".join(predicted.output.split())  # named among the files
    with pytest.raises(InputError, match="Audio clip 1 of the list: The audio clip lasts 2 ms"):
        vlmedge.load(art).tag([tone_clip(1.0), tiny], sample_rate=SR)
    pytest.importorskip("pyarrow")
    rows = run_local(make_job(art, "tag"), collect([str(tmp_path / "tiny.wav"), str(audio_files["short"])], "audio"),
                     batch_size=2).to_pylist()
    by_name = {Path(r["path"]).name: r for r in rows}
    assert "shorter than one 25 ms frame" in by_name["tiny.wav"]["error"]
    assert by_name[audio_files["short"].name]["error"] is None


@pytest.mark.parametrize("num_labels,problem_type,activation", [(4, "regression", "none"), (1, None, "softmax")])
def test_regression_and_one_label_scores_match_the_transformers_pipeline(num_labels, problem_type, activation,
                                                                         audio_files, tmp_path):
    """transformers' audio-classification pipeline gives a regression model's raw outputs and
    softmaxes one logit (unlike its image pipeline); so does the artifact. Raw outputs take no
    threshold (in the API and in a bulk job) and aggregate over windows as they are."""
    import vlmedge
    from vlmedge.bulk.job import make_job

    model_cfg, extractor_cfg, _ = CONFIGS["single-softmax"]
    torch.manual_seed(0)
    config = transformers.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    patch_size=16, initializer_range=0.2,
                                    **{**model_cfg, "num_labels": num_labels, "problem_type": problem_type})
    model = transformers.ASTForAudioClassification(config).eval()
    extractor = transformers.ASTFeatureExtractor(**extractor_cfg)
    model.save_pretrained(tmp_path / "hf")
    extractor.save_pretrained(tmp_path / "hf")
    vlmedge.export(str(tmp_path / "hf"), tmp_path / "artifact")
    tagger = vlmedge.load(tmp_path / "artifact")
    assert tagger.activation == activation
    wave = read_mono_16k(audio_files["short"])
    pipe = transformers.pipeline("audio-classification", model=model, feature_extractor=extractor)
    expected = {e["label"]: e["score"] for e in pipe(wave, top_k=num_labels)}
    got = tagger.tag(wave, sample_rate=SR, top_k=None).tags
    assert [t.label for t in got] == list(expected)
    np.testing.assert_allclose([t.score for t in got], list(expected.values()), atol=ATOL)
    if activation != "none":
        return
    with pytest.raises(UsageError, match="raw regression outputs"):
        tagger.tag(wave, sample_rate=SR, threshold=0.5)
    with pytest.raises(UsageError, match="raw regression outputs"):
        make_job(tmp_path / "artifact", "tag", threshold=0.5)
    if importlib.util.find_spec("starlette") and importlib.util.find_spec("httpx"):  # served: refused alike
        import httpx

        from tests.serve_support import running
        from vlmedge.serve import create_app

        with running(create_app({"ast": tagger}, warm_up=False)) as url:
            answer = httpx.post(f"{url}/v1/models/ast/tag", data={"threshold": "0.5"},
                                files=[("audio", ("short.wav", audio_files["short"].read_bytes()))])
        assert answer.status_code == 422 and "raw regression outputs" in answer.json()["error"]["message"]
    (_, windows), = tagger.window_probabilities(audio_files["long"])
    assert len(windows) > 1 and (windows < 0).any()
    np.testing.assert_allclose(tagger.probabilities(audio_files["long"], aggregate="mean")[0], windows.mean(0),
                               atol=1e-6)


def test_id2label_with_a_gap_is_refused_naming_the_missing_ids(tmp_path):
    import vlmedge
    from vlmedge.errors import UnsupportedModelError

    model_cfg, extractor_cfg, _ = CONFIGS["single-softmax"]
    config = transformers.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    patch_size=16, **{**model_cfg, "num_labels": 3},
                                    id2label={0: "a", 2: "c", 5: "f"})
    transformers.ASTForAudioClassification(config).save_pretrained(tmp_path / "hf")
    transformers.ASTFeatureExtractor(**extractor_cfg).save_pretrained(tmp_path / "hf")
    with pytest.raises(UnsupportedModelError, match=r"no label for id\(s\) 1 of its 3 labels .*fix id2label"):
        vlmedge.export(str(tmp_path / "hf"), tmp_path / "artifact")


def test_a_feature_extractor_it_cannot_reproduce_is_the_model_folders_fault_not_an_artifacts(hf_dir, tmp_path):
    """An invalid extractor config was refused in the artifact spec's words ("re-export the
    artifact") when there was no artifact yet: the export names the folder's file instead."""
    import json
    import shutil

    import vlmedge
    from vlmedge.errors import UnsupportedModelError

    folder = tmp_path / "hf"
    shutil.copytree(hf_dir("single-softmax"), folder)
    extractor = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**extractor, "std": 0.0}))
    with pytest.raises(UnsupportedModelError, match=r"preprocessor_config.json describes features vlmedge cannot make "
                                                    r"\(Invalid audio spec: std and mel_floor must be positive\); "
                                                    r"fix the feature extractor and save it again\.$"):
        vlmedge.export(str(folder), tmp_path / "artifact")
    assert not (tmp_path / "artifact").exists()


# -- the built-in model --------------------------------------------------------------------------


@pytest.mark.skipif(not (BUILTIN_DIR / "config.json").is_file(),
                    reason="builtin:sounds-ast is not trained yet (exporters/builtin/models/sounds-ast/)")
def test_builtin_sounds_ast_exports_and_tags_a_chirp(tmp_path):
    """`vlmedge export builtin:sounds-ast` works, and generated upward chirps (1.2 s: one
    model window of 1.28 s, like the training clips) are tagged chirp_up, as HF tags them."""
    from typer.testing import CliRunner

    import vlmedge
    from vlmedge.cli import app
    from vlmedge.exporters.builtin import sounds

    torch.set_num_threads(2)
    out = tmp_path / "sounds-ast"
    result = CliRunner().invoke(app, ["export", "builtin:sounds-ast", "-o", str(out)])
    assert result.exit_code == 0, result.output
    tagger = vlmedge.load(out)
    assert tagger.labels == list(sounds.CLASSES)
    extractor = transformers.ASTFeatureExtractor.from_pretrained(BUILTIN_DIR)
    model = transformers.ASTForAudioClassification.from_pretrained(BUILTIN_DIR).eval()
    paths, top1 = [], []
    for seed in range(5):
        chirp = sounds.synthesize("chirp_up", np.random.default_rng(500 + seed), sounds.SAMPLE_RATE, seconds=1.2)
        path = tmp_path / f"chirp-{seed}.wav"
        sf.write(path, chirp, sounds.SAMPLE_RATE, subtype="FLOAT")
        paths.append(path)
        with torch.no_grad():
            expected = model(**extractor(chirp, sampling_rate=sounds.SAMPLE_RATE, return_tensors="pt")).logits
        expected = expected.softmax(-1).numpy()[0]
        got = tagger.probabilities(path)[0]
        np.testing.assert_allclose(got, expected, atol=ATOL)
        tags = tagger.tag(path, top_k=3).tags
        assert "chirp_up" in [t.label for t in tags], tags
        top1.append(tags[0].label)
    assert top1.count("chirp_up") >= 4, top1
    rows = json.loads(CliRunner().invoke(app, ["predict", str(out), *map(str, paths), "--json"]).output)
    assert [row["predictions"][0]["label"] for row in rows] == top1

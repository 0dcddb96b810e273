"""Issue 3: CLIP and SigLIP image/text embeddings and zero-shot, torch-free, against the
Hugging Face source: tiny seeded models of the real classes for both CLIP EOS-pooling
conventions and for SigLIP, exported once per module."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from vlmedge.errors import InputError, UsageError
from tests.clip_models import CONFIGS, EXTRA_TOKEN, tiny_clip_folder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "exporters" / "sample_data"
SHAPES_CLIP = REPO / "exporters" / "builtin" / "models" / "shapes-clip"

CAPTIONS = [
    "a photo of a cat",
    "A PHOTO OF A DOG!",
    "café naïve résumé Ångström Straße",
    "e\u0301 combining o\u0308 accents",
    "a dog 🐶 and a cat 🐱 👩‍👩‍👧 🇫🇷 👍🏽",
    "日本語のテキスト 中文字符 한국어 텍스트",
    "!!!???...,,,;;;:::---___*** ((( ))) ",
    "",
    "   spaces\tand\ttabs\nand newlines  ",
    " ".join(f"word{i % 37} and" if i % 5 else "x" for i in range(500)),
    f"a photo of a {EXTRA_TOKEN} cat",
]
LABELS = ["cat", "dog", "car", "red circle", "yellow star", "hexagon"]
TEMPLATE = "a photo of a {}."


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """kind -> (HF folder, exported artifact folder)."""
    import vlmedge

    cache: dict[str, tuple[Path, Path]] = {}

    def make(kind: str) -> tuple[Path, Path]:
        if kind not in cache:
            root = tmp_path_factory.mktemp(f"clip-{kind}")
            folder = tiny_clip_folder(kind, root)
            out = root / "artifact"
            vlmedge.export(str(folder), out)
            cache[kind] = (folder, out)
        return cache[kind]

    return make


@pytest.fixture(scope="module")
def pipelines(made):
    import vlmedge

    cache = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = vlmedge.load(made(kind)[1])
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def hf(made):
    """kind -> (model, tokenizer, image processor) loaded by transformers from the saved folder."""
    cache = {}

    def get(kind: str):
        if kind not in cache:
            folder = made(kind)[0]
            config = transformers.AutoConfig.from_pretrained(folder)
            model = getattr(transformers, config.architectures[0]).from_pretrained(folder).eval()
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
            processor = transformers.AutoImageProcessor.from_pretrained(folder)
            cache[kind] = (model, tokenizer, processor)
        return cache[kind]

    return get


def _pooled(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (_normalize(a) * _normalize(b)).sum(-1)


def hf_text(kind, hf, texts) -> np.ndarray:
    model, tokenizer, _ = hf(kind)
    inputs = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        return _pooled(model.get_text_features(**inputs)).numpy()


def hf_images(kind, hf, paths) -> np.ndarray:
    from transformers.image_utils import load_image

    model, _, processor = hf(kind)
    pixels = processor([load_image(str(p)) for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return _pooled(model.get_image_features(pixel_values=pixels)).numpy()


def hf_zero_shot(kind, hf, paths, labels, template=TEMPLATE) -> tuple[np.ndarray, np.ndarray]:
    """(logits_per_image, probabilities) as a Hugging Face user computes them."""
    from transformers.image_utils import load_image

    model, tokenizer, processor = hf(kind)
    text = tokenizer([template.format(label) for label in labels], padding="max_length", truncation=True,
                     return_tensors="pt")
    pixels = processor([load_image(str(p)) for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(**text, pixel_values=pixels).logits_per_image
    probs = logits.softmax(-1) if kind.startswith("clip") else torch.sigmoid(logits)
    return logits.numpy(), probs.numpy()


# -- export --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", CONFIGS)
def test_manifest_two_graphs_tokenizer_and_scoring(kind, made, hf):
    from vlmedge.artifact import Artifact

    artifact = Artifact.open(made(kind)[1])
    assert artifact.task == "clip"
    assert {e["path"] for e in artifact.model_entries()} == {"onnx/image.fp32.onnx", "onnx/text.fp32.onnx"}
    for entry in artifact.model_entries():
        report = entry["parity"]
        assert report["passed"], report["failures"]
        (metrics,) = report["outputs"].values()
        assert metrics["cosine_min"] >= 0.99999 and metrics["max_abs"] <= 1e-3
    assert artifact.entry("resource")["path"] == "tokenizer.json"
    assert set(artifact.manifest["preprocess"]) == {"image", "text"}
    text_inputs = [i["name"] for i in artifact.manifest["graphs"]["text"]["inputs"]]
    assert text_inputs[0] == "input_ids"
    assert all(i["shape"][0] == "batch" for g in artifact.manifest["graphs"].values() for i in g["inputs"])
    model = hf(kind)[0]
    post = artifact.manifest["postprocess"]
    assert post["normalized"] is False
    assert post["logit_scale"] == pytest.approx(float(model.logit_scale.detach().exp()), rel=1e-6)
    if kind == "siglip":
        assert post["scoring"] == "sigmoid" and post["logit_bias"] == pytest.approx(float(model.logit_bias.detach()))
        assert artifact.manifest["preprocess"]["text"]["context_length"] == 64
    else:
        assert post["scoring"] == "softmax" and post["logit_bias"] is None
        assert artifact.manifest["source"]["text_pooling"] == ("argmax" if kind == "clip-legacy" else "first_eos")
    # `vlmedge check` makes the bundled images' and captions' rows again, as the export made them
    from vlmedge.check import check_artifact

    remade = {r["graph"]: r["sample_files"] for r in check_artifact(artifact.root)}
    assert remade["text"] == {"files": ["captions.txt"], "max_input_difference": 0.0}
    assert len(remade["image"]["files"]) == 5 and remade["image"]["max_input_difference"] == 0.0


# -- parity with Hugging Face ----------------------------------------------------------------

@pytest.mark.parametrize("kind", CONFIGS)
def test_token_ids_equal_hugging_face(kind, pipelines, hf):
    _, tokenizer, _ = hf(kind)
    ours = pipelines(kind).tokenizer.encode(CAPTIONS)
    ref = tokenizer(CAPTIONS, padding="max_length", truncation=True)
    assert ours["input_ids"].tolist() == ref["input_ids"]
    assert ours["attention_mask"].tolist() == ref["attention_mask"]


@pytest.mark.parametrize("kind", CONFIGS)
def test_text_embeddings_equal_hugging_face(kind, pipelines, hf):
    ours = pipelines(kind).embed_texts(CAPTIONS)
    reference = hf_text(kind, hf, CAPTIONS)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosines = _rowwise_cosine(ours, reference)
    assert cosines.min() >= 0.99999, dict(zip(CAPTIONS, cosines))
    # one caption at a time gives the same embeddings as the batch
    single = pipelines(kind).embed_texts(CAPTIONS[4])
    assert single.shape == (1, ours.shape[1])
    np.testing.assert_allclose(single[0], ours[4], atol=1e-6)


@pytest.mark.parametrize("kind", CONFIGS)
def test_text_graph_runs_at_the_longest_caption_where_padding_cannot_change_it(kind, made, pipelines, hf):
    """CLIP pools at EOS under a causal mask, so its text graph takes any length and each batch runs
    without the padding its captions all end with; SigLIP pools its last position: fixed at 64."""
    import vlmedge

    inputs = json.loads((made(kind)[1] / "manifest.json").read_text())["graphs"]["text"]["inputs"]
    clip = vlmedge.load(made(kind)[1])  # its own instance: the spy below stays out of the shared one
    session = clip.model.sessions["text"]
    widths = []  # as the backend's own call gets them
    run = session._run
    session._run = lambda feeds: widths.append(feeds["input_ids"].shape[1]) or run(feeds)
    short = ["a cat", "a photo of a dog on a sofa"]
    ours = clip.embed_texts(short)
    if kind == "siglip":
        assert [i["shape"] for i in inputs] == [["batch", 64]] * 2 and widths == [64]
        return
    assert [i["shape"] for i in inputs] == [["batch", "sequence"]] * 2
    lengths = [len(ids) for ids in hf(kind)[1](short)["input_ids"]]
    assert widths == [max(lengths)] and max(lengths) < clip.context_length
    # the same embeddings as the source at the full context and at padding=True
    model, tokenizer, _ = hf(kind)
    with torch.no_grad():
        longest = _pooled(model.get_text_features(**tokenizer(short, padding=True, return_tensors="pt"))).numpy()
    assert _rowwise_cosine(ours, hf_text(kind, hf, short)).min() >= 0.99999
    assert _rowwise_cosine(ours, longest).min() >= 0.99999
    # a batch with a caption that fills the context runs at the full context
    clip.embed_texts(short + [CAPTIONS[9]])
    assert widths[-1] == clip.context_length


def test_a_dynamic_int8_text_file_answers_a_caption_alone_as_beside_a_longer_one(made, tmp_path):
    """A file that runs each item alone (ORT's dynamic int8 takes its activation scales from
    the call) runs each caption without its own padding: with the batch's, the padding a longer
    neighbour needs moved a caption's embedding by up to 0.03 (and zero-shot probabilities by
    0.17) with what shared its call, a served request with what other clients sent."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import vlmedge
    from vlmedge.runtimes.base import open_session

    path = tmp_path / "text.int8.onnx"
    quantize_dynamic(str(made("clip")[1] / "onnx" / "text.fp32.onnx"), str(path), weight_type=QuantType.QInt8)
    clip = vlmedge.load(made("clip")[1])
    tokens = clip.tokenizer.encode(["a cat", " ".join(["a very long caption about many things"] * 20)])
    session = open_session(path, one_item_per_call=True)
    assert session.trims_padding
    together = session.run(tokens)[session.outputs[0].name]
    alone = session.run({name: value[:1] for name, value in tokens.items()})[session.outputs[0].name]
    np.testing.assert_array_equal(together[:1], alone)
    width = int(tokens["attention_mask"][1].sum())  # the caption padded to its neighbour's length
    padded = session._run({name: value[:1, :width] for name, value in tokens.items()})[session.outputs[0].name]
    assert np.abs(padded - alone).max() > 1e-4  # the effect this guards against


def test_a_text_graph_of_any_length_is_pre_processed_before_int8(made, tmp_path, monkeypatch):
    """ORT's symbolic shape inference cannot follow the causal mask built from a dynamic
    sequence axis; the graph is pre-processed without it rather than quantized raw."""
    import onnx
    from onnxruntime.quantization.quant_utils import model_has_pre_process_metadata
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from vlmedge.exporters.quantize import _prepared

    base = made("clip")[1] / "onnx" / "text.fp32.onnx"
    monkeypatch.chdir(tmp_path)  # where ORT leaves the model it could not infer (sym_shape_infer_temp.onnx)
    with pytest.raises(Exception, match="Incomplete symbolic shape inference"):  # what made it fall back to raw
        quant_pre_process(str(base), str(tmp_path / "full.onnx"))
    (tmp_path / "recipe").mkdir()
    prepared = _prepared(base, tmp_path / "recipe")
    assert prepared == tmp_path / "prepared.onnx" and model_has_pre_process_metadata(onnx.load(str(prepared)))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_export_latency_times_the_text_graph_as_the_runtime_runs_it(kind, made):
    """The export's latency (which the int8 ladder ranks recipes by) runs the first parity
    caption at its own length where the graph takes any length, and at the context where not."""
    import vlmedge
    from vlmedge.exporters.budget import measure_latency

    session = vlmedge.load(made(kind)[1]).model.sessions["text"]
    widths = []  # as the backend's own call gets them
    run = session._run
    session._run = lambda feeds: widths.append(feeds["input_ids"].shape[1]) or run(feeds)
    parity = np.load(made(kind)[1] / "samples" / "parity.npz")
    feeds = {name: parity[f"text.input.{name}"] for name in ("input_ids", "attention_mask")}
    latency = measure_latency(session, feeds, warmup=1, runs=3)
    assert latency["runs"] == 3 and len(widths) == 4
    first = int(feeds["attention_mask"][0].sum())
    assert set(widths) == ({64} if kind == "siglip" else {first}) and first < feeds["input_ids"].shape[1]


def test_the_int8_ladder_times_a_level_s_files_round_robin(made):
    """measure_latencies (what the int8 ladder ranks a level's passing files by) runs one call
    of each session in turn, so a CPU that slows down for a while slows each file alike."""
    import vlmedge
    from vlmedge.exporters.budget import measure_latencies

    calls = []
    sessions = [vlmedge.load(made("clip")[1]).model.sessions["text"] for _ in range(3)]
    for tag, session in enumerate(sessions):
        run = session.run
        session.run = lambda feeds, tag=tag, run=run, **kw: calls.append(tag) or run(feeds, **kw)
    parity = np.load(made("clip")[1] / "samples" / "parity.npz")
    feeds = {name: parity[f"text.input.{name}"] for name in ("input_ids", "attention_mask")}
    latencies = measure_latencies(sessions, feeds, warmup=1, runs=4)
    assert [latency["runs"] for latency in latencies] == [4, 4, 4]
    assert all(latency["median_ms"] > 0 for latency in latencies)
    assert calls == [0, 1, 2] + [0, 1, 2] * 4  # a warm-up call each, then four rounds


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_bench_times_the_text_graph_as_the_runtime_runs_it(kind, made, pipelines):
    import vlmedge

    report = vlmedge.bench(made(kind)[1], backends=["onnxruntime"], precisions=["fp32"], batch_sizes=[1, 4],
                           iterations=2, warmup=0, roofline=False)
    texts = [row for row in report.rows if row.graph == "text"]
    if kind == "siglip":
        assert all("tokens" not in text.inputs for text in texts)
        return
    # every batch size runs the first bundled caption, at its own length: the same work per caption
    # (the first captions tiled ran batch 1 at 8 tokens and batch 8 at 46)
    first = (made(kind)[1] / "samples" / "captions.txt").read_text(encoding="utf-8").splitlines()[0]
    length = int(pipelines(kind).tokenizer.encode(first)["attention_mask"].sum())
    assert length < pipelines(kind).context_length and [t.batch_size for t in texts] == [1, 4]
    assert all(text.inputs.endswith(f", {length} tokens") for text in texts), [text.inputs for text in texts]


def test_text_past_the_positions_is_an_input_error_on_each_backend(made, tmp_path):
    """The dynamic sequence axis takes any length; past the model's positions the backend
    refuses it, and the session says so as an InputError with the shapes."""
    import vlmedge

    out = tmp_path / "openvino"
    vlmedge.export(str(made("clip")[0]), out, to=["openvino"], precision=["fp32"])
    too_long = {"input_ids": np.ones((2, 100), np.int64), "attention_mask": np.ones((2, 100), np.int64)}
    for backend in ("onnxruntime", "openvino"):
        session = vlmedge.load(out, backend=backend).model.sessions["text"]
        with pytest.raises(InputError, match=r"inputs of shapes .*\[2, 100\]"):
            session.run(too_long)


def test_tokens_of_another_width_are_input_errors(pipelines):

    clip = pipelines("clip")
    tokens = clip.tokenizer.encode(["a cat", "a dog"])
    for bad in ({k: v[:, :10] for k, v in tokens.items()}, {k: np.pad(v, ((0, 0), (0, 5))) for k, v in tokens.items()},
                {k: v[0] for k, v in tokens.items()}):
        with pytest.raises(InputError, match="tokenizer.encode"):
            clip.embed_texts_prepared(bad)
    # ids outside the vocabulary: -1 was gathered as the last row and gave an embedding
    for bad_id in (-1, clip.tokenizer.vocab_size):
        bad = {k: v.copy() for k, v in tokens.items()}
        bad["input_ids"][0, 1] = bad_id
        with pytest.raises(InputError, match=rf"ids outside the tokenizer's 0\.\.{clip.tokenizer.vocab_size - 1}"):
            clip.embed_texts_prepared(bad)
    np.testing.assert_allclose(clip.embed_texts_prepared(tokens), clip.embed_texts(["a cat", "a dog"]), atol=1e-6)


@pytest.mark.parametrize("kind", CONFIGS)
def test_image_embeddings_equal_hugging_face(kind, pipelines, hf, image_files):
    ours = pipelines(kind).embed_images([str(p) for p in image_files])
    reference = hf_images(kind, hf, image_files)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosines = _rowwise_cosine(ours, reference)
    assert cosines.min() >= 0.99999, dict(zip((p.name for p in image_files), cosines))


@pytest.mark.parametrize("kind", CONFIGS)
def test_zero_shot_equals_hugging_face(kind, pipelines, hf, image_files):
    clip = pipelines(kind)
    logits, expected = hf_zero_shot(kind, hf, image_files, LABELS)
    got = clip.probabilities([str(p) for p in image_files], LABELS, [TEMPLATE])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert expected.max() - expected.min() > 0.2  # the tiny model is far from uniform
    np.testing.assert_allclose(clip.logits([str(p) for p in image_files], LABELS, [TEMPLATE]), logits,
                               atol=1e-3, rtol=1e-4)
    results = clip.zero_shot([str(p) for p in image_files], LABELS, [TEMPLATE], top_k=len(LABELS))
    for row, preds in zip(logits, results):
        assert [p.index for p in preds] == list(np.argsort(-row, kind="stable"))
        assert [p.label for p in preds] == [LABELS[i] for i in np.argsort(-row, kind="stable")]
    single = clip.zero_shot(str(image_files[0]), LABELS, [TEMPLATE], top_k=2)
    assert len(single) == 2 and single[0].label == results[0][0].label
    if kind.startswith("clip"):
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_eos_pooling_conventions_differ_where_the_source_differs(pipelines, hf):
    """Same weights, two configs: legacy (eos_token_id == 2) pools at the argmax id, which
    is the added token above EOS; the new config pools at the first EOS. Each artifact
    follows its own source, and the two agree where the conventions coincide."""
    caption = f"a photo of a {EXTRA_TOKEN} cat"
    legacy, new = pipelines("clip-legacy"), pipelines("clip")
    assert float(legacy.embed_texts(caption)[0] @ new.embed_texts(caption)[0]) < 0.999
    np.testing.assert_allclose(legacy.embed_texts("a photo of a cat"), new.embed_texts("a photo of a cat"), atol=1e-6)
    for kind, clip in (("clip-legacy", legacy), ("clip", new)):
        assert _rowwise_cosine(clip.embed_texts(caption), hf_text(kind, hf, [caption])).min() >= 0.99999


def test_prompt_ensembling_and_reuse(pipelines, hf):
    clip = pipelines("clip")
    templates = ["a photo of a {}.", "a drawing of a {}", "{} in the wild"]
    matrix = clip.text_embeddings(LABELS, templates)
    assert matrix.shape == (len(LABELS), 16) and matrix.dtype == np.float32
    per_prompt = _normalize(hf_text("clip", hf, [t.format(label) for label in LABELS for t in templates]))
    expected = _normalize(per_prompt.reshape(len(LABELS), len(templates), -1).mean(axis=1))
    assert _rowwise_cosine(matrix, expected).min() >= 0.99999
    image = str(SAMPLES / "red-circle.jpg")
    reused = clip.zero_shot(image, LABELS, text_embeddings=matrix)
    assert reused == clip.zero_shot(image, LABELS, templates)
    # the templates make the label embeddings: with these given, other templates would be ignored
    with pytest.raises(InputError, match="templates and text_embeddings were both given"):
        clip.zero_shot(image, LABELS, ["a sketch of a {}"], text_embeddings=matrix)


def test_zero_shot_ranks_every_label_unless_top_k_says_fewer(pipelines):
    """As transformers' zero-shot pipeline answers: every candidate (it kept 5 of 6 silently)."""
    clip = pipelines("clip")
    image = str(SAMPLES / "red-circle.jpg")
    labels = ["cat", "dog", "red circle", "a car", "yellow star", "purple cross"]
    every = clip.zero_shot(image, labels)
    assert sorted(p.label for p in every) == sorted(labels) and every == clip.zero_shot(image, labels, top_k=None)
    assert clip.zero_shot(image, labels, top_k=2) == every[:2]
    assert sum(p.score for p in every) == pytest.approx(1.0, abs=1e-5)  # CLIP: a softmax over the labels


# -- concurrency -------------------------------------------------------------------------------

def test_threads_give_the_serial_results(pipelines, image_files):
    clip = pipelines("clip")
    images = [str(p) for p in image_files[:4]]
    matrix = clip.text_embeddings(LABELS)

    def call(i: int):
        if i % 3 == 0:
            return clip.embed_texts([CAPTIONS[i % len(CAPTIONS)], LABELS[i % len(LABELS)]])
        if i % 3 == 1:
            return clip.embed_images(images[i % len(images)])
        return np.array([p.score for p in clip.zero_shot(images[i % len(images)], LABELS, text_embeddings=matrix)])

    serial = [call(i) for i in range(20)]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(20):
                results[(t, i)] = call((i + 5 * t) % 20)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for (t, i), value in results.items():
        np.testing.assert_array_equal(value, serial[(i + 5 * t) % 20])


# -- bad input ----------------------------------------------------------------------------------

def test_bad_inputs_are_input_errors(pipelines):

    clip = pipelines("clip")
    image = str(SAMPLES / "red-circle.jpg")
    for bad in (None, [], [1], ["ok", None], b"bytes", 3.5, {"a": 1}):
        with pytest.raises(InputError):
            clip.embed_texts(bad)
    for bad in (None, [], 42):
        with pytest.raises(InputError):
            clip.embed_images(bad)
    for labels in (None, [], "cat,dog", ["cat", ""], ["cat", None]):
        with pytest.raises(InputError):
            clip.zero_shot(image, labels)
    with pytest.raises(InputError, match=r"Label 'cat' is given twice \(labels 0 and 2\)"):
        clip.zero_shot(image, ["cat", "dog", "cat"])
    # a numpy column of labels is a list of them (it was "needs a non-empty list")
    assert clip.zero_shot(image, np.array(["cat", "dog"])) == clip.zero_shot(image, ["cat", "dog"])
    with pytest.raises(InputError, match=r"Label 0 is 1; every label must be a non-empty string"):
        clip.zero_shot(image, np.array([1, 2]))
    with pytest.raises(InputError):
        clip.zero_shot(image, ["cat"], templates=["no placeholder"])
    # templates are filled as transformers' pipeline fills them (str.format), and one whose fields could
    # do more than place the label (a huge width from a request, an attribute, a second label) is refused
    filled = clip.embed_texts(["{a} cat"])  # '{{a}} {}'.format('cat'), with the label in any of its spellings
    for template in ("{{a}} {}", "{{a}} {0}", "{{a}} {label}"):
        np.testing.assert_allclose(clip.text_embeddings(["cat"], [template]), filled, atol=1e-6)
    for bad in ("{:>999999999}", "{0.__class__}", "{} and {}", "{x}", "a {"):
        with pytest.raises(InputError, match="is not a template of one label"):
            clip.zero_shot(image, ["cat"], templates=[bad])
    with pytest.raises(UsageError):
        clip.zero_shot(image, ["cat"], top_k=0)
    with pytest.raises(InputError):
        clip.zero_shot(image, ["cat", "dog"], text_embeddings=clip.text_embeddings(["cat"]))


def test_megabyte_caption_is_truncated(pipelines):
    clip = pipelines("clip")
    huge = "a photo of a cat on a mat. " * 40_000  # ~1 MB
    assert len(huge) > 1_000_000
    got = clip.embed_texts(huge)
    assert got.shape == (1, 16) and np.isfinite(got).all()
    np.testing.assert_allclose(got, clip.embed_texts(huge[:2000]), atol=1e-6)


def test_runtime_is_torch_free(made):
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys
        import numpy as np
        import vlmedge
        clip = vlmedge.load(sys.argv[1], backend="onnxruntime")
        clip.zero_shot(np.zeros((20, 30, 3), np.uint8), ["cat", "dog"])
        clip.embed_texts(["a cat", ""])
        heavy = sorted(m for m in ("torch", "transformers", "onnx", "openvino", "tensorrt") if m in sys.modules)
        print("HEAVY:" + ",".join(heavy))
    """)
    result = subprocess.run([sys.executable, "-c", script, str(made("siglip")[1])], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY:"


# -- CLI -----------------------------------------------------------------------------------------

def test_cli_predict_and_embed(made, pipelines, tmp_path):
    from typer.testing import CliRunner

    from vlmedge.cli import app

    out = made("clip")[1]
    image = str(SAMPLES / "red-circle.jpg")
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(out), image, "--labels", "cat, dog,car", "--json", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    expected = pipelines("clip").zero_shot(image, ["cat", "dog", "car"], top_k=2)
    assert [p["label"] for p in rows[0]["predictions"]] == [p.label for p in expected]
    assert rows[0]["predictions"][0]["score"] == pytest.approx(expected[0].score, abs=1e-6)

    result = runner.invoke(app, ["predict", str(out), image, "--labels", "cat,dog", "--template", "a {} photo",
                                 "--template", "a photo of a {}."])
    assert result.exit_code == 0, result.output
    assert "cat" in result.stdout and "dog" in result.stdout

    result = runner.invoke(app, ["predict", str(out), image])
    assert result.exit_code == 2
    assert "--labels" in result.output
    result = runner.invoke(app, ["predict", str(out), image, "--labels", "cat,dog", "--template", "photo"])
    assert result.exit_code == 2 and "Template 'photo' has no '{}' where the label goes" in result.output

    npy = tmp_path / "emb.npy"
    result = runner.invoke(app, ["embed", str(out), image, "--text", "a cat", "--text", "日本語", "--out", str(npy)])
    assert result.exit_code == 0, result.output
    rows = np.load(npy)
    clip = pipelines("clip")
    np.testing.assert_allclose(rows[0], clip.embed_images(image)[0], atol=1e-6)
    np.testing.assert_allclose(rows[1:], clip.embed_texts(["a cat", "日本語"]), atol=1e-6)


# -- builtin:shapes-clip ------------------------------------------------------------------------

@pytest.mark.skipif(not (SHAPES_CLIP / "config.json").is_file(), reason="builtin shapes-clip is not trained yet")
def test_builtin_shapes_clip_exports_and_classifies_shapes(tmp_path):
    from typer.testing import CliRunner

    import vlmedge
    from vlmedge.cli import app
    from vlmedge.exporters.builtin import shapes

    out = tmp_path / "shapes-clip"
    result = CliRunner().invoke(app, ["export", "builtin:shapes-clip", "-o", str(out)])
    assert result.exit_code == 0, result.output
    clip = vlmedge.load(out)
    rng = np.random.default_rng(20_240_612)
    examples = [shapes.random_example(rng, 64) for _ in range(40)]
    labels = list(shapes.SHAPES)
    matrix = clip.text_embeddings(labels, ["a photo of a {}."])
    predictions = clip.zero_shot([e[0] for e in examples], labels, top_k=1, text_embeddings=matrix)
    accuracy = np.mean([preds[0].label == e[1] for preds, e in zip(predictions, examples)])
    assert accuracy >= 0.6, f"shape zero-shot accuracy {accuracy:.2f} (chance {1 / len(labels):.2f})"


def test_towers_that_embed_in_different_widths_are_refused(tmp_path):
    """A SigLIP whose text projection (24) is not its image width (32): transformers' own forward
    fails on it, and vlmedge exported it with parity, then failed every zero-shot call blaming
    the user's text embeddings."""
    import vlmedge
    from tests.clip_models import SIGLIP_CONTEXT, tiny_siglip
    from tests.text_fixtures import tiny_sentencepiece_tokenizer
    from vlmedge.errors import UnsupportedModelError

    tokenizer = tiny_sentencepiece_tokenizer("Siglip2Tokenizer", padding_side="right", add_eos_token=True,
                                             model_max_length=SIGLIP_CONTEXT)
    model, processor = tiny_siglip(
        dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             max_position_embeddings=SIGLIP_CONTEXT, pad_token_id=tokenizer.pad_token_id,
             eos_token_id=tokenizer.eos_token_id, projection_size=24),
        dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    folder = tmp_path / "siglip"
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    with pytest.raises(UnsupportedModelError, match="image tower embeds in 32 dimensions and its text tower in 24"):
        vlmedge.export(str(folder), tmp_path / "out")
    assert not (tmp_path / "out").exists()

"""Issue 2's check: for each family, from an image file, the artifact's probabilities
equal the Hugging Face reference (load_image -> processor -> model -> softmax)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.hf_models import FAMILIES

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def hf_probabilities(folder, path) -> np.ndarray:
    from transformers.image_utils import load_image

    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    model = getattr(transformers, config.architectures[0]).from_pretrained(folder).eval()
    pixels = processor(load_image(str(path)), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels).logits.softmax(-1).numpy()[0]


@pytest.fixture(scope="module")
def exported(hf_classifier_dir, tmp_path_factory):
    import vlmedge

    made = {}

    def make(family):
        if family not in made:
            out = tmp_path_factory.mktemp(f"artifact-{family}") / "artifact"
            vlmedge.export(str(hf_classifier_dir(family)), out)
            made[family] = out
        return made[family]

    return make


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_probabilities_match_hugging_face(family, exported, hf_classifier_dir, image_files):
    import vlmedge

    classifier = vlmedge.load(exported(family))
    folder = hf_classifier_dir(family)
    for path in image_files:
        expected = hf_probabilities(folder, path)
        got = classifier.probabilities(str(path))[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"{family} on {path.name}")
        top5 = [p.index for p in classifier.classify(path, top_k=5)]
        assert top5 == list(np.argsort(-expected, kind="stable")[:5]), f"{family} on {path.name}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_manifest_records_parity_and_passes_gate(family, exported):
    from vlmedge.artifact import Artifact

    artifact = Artifact.open(exported(family))
    (entry,) = artifact.model_entries()
    report = entry["parity"]
    assert report["passed"] and report["precision"] == "fp32"
    logits = report["outputs"]["logits"]
    assert logits["cosine_min"] >= 0.99999 and logits["max_abs"] <= 1e-3 and logits["top1"] == 1.0
    assert report["samples"] >= 8


def test_fp32_abs_bound_scales_with_the_output_magnitude():
    """fp32's max_abs is per unit of the output's magnitude: logits of ~1.5e3 that differ by
    2.6e-3 (a relative error of 1.8e-6) pass; small outputs keep the absolute 1e-3 bound."""
    from vlmedge.parity import GATES, abs_bound, compare_output, judge

    rng = np.random.default_rng(0)
    large = rng.normal(0, 500, (4, 10)).astype(np.float32)
    large[0, 0] = 1.5e3
    nudged = large.copy()
    nudged[1, 3] += 2.6e-3
    metrics = compare_output(large, nudged, "logits")
    assert abs_bound(GATES["fp32"], metrics) == pytest.approx(1e-3 * np.abs(large).max())
    assert judge({"logits": metrics}, GATES["fp32"]) == []
    wrong = large.copy()
    wrong[1, 3] += 5.0  # 3.3e-3 relative: over the bound
    (failure,) = judge({"logits": compare_output(large, wrong, "logits")}, GATES["fp32"])
    assert "max abs error 5 >" in failure and "max|reference|" in failure
    small = rng.normal(0, 0.3, (4, 10)).astype(np.float32)
    off = small.copy()
    off[0, 0] += 2e-3  # below 1 in magnitude: the bound stays 1e-3
    failures = judge({"logits": compare_output(small, off, "logits")}, GATES["fp32"])
    assert any("max abs error 0.002 > 0.001" in f for f in failures)


def test_non_finite_outputs_fail_every_gate_however_loose():
    """A file whose values overflow (fp16) answers NaN: its rows' cosine read 0, and the failure
    said that min_cosine <= 0 would pass; with the gate loosened so, the file shipped, passed
    `check` and classified with NaN scores. Non-finite outputs now fail any gate, and say why."""
    import dataclasses

    from vlmedge.parity import GATES, compare_output, judge

    reference = np.random.default_rng(0).normal(0, 1, (4, 10)).astype(np.float32)
    overflowed = np.full_like(reference, np.nan)
    overflowed[1] = reference[1]  # one row still right
    anything = dataclasses.replace(GATES["fp16"], min_cosine=-1.0, min_top1=0.0)
    metrics = compare_output(reference, overflowed, "logits")
    assert metrics["non_finite"] == 30
    (failure,) = judge({"logits": metrics}, anything)
    assert failure == ("output 'logits' holds 30 NaN or infinite value(s) where the source's are finite: the model's "
                       "values overflow this precision, so no gate passes it")
    with_inf = reference.copy()
    with_inf[0, 0] = np.inf
    assert judge({"logits": compare_output(reference, with_inf, "logits")}, anything)
    assert judge({"logits": compare_output(reference, reference.copy(), "logits")}, GATES["fp16"]) == []


def tiny_vit(folder, **config):
    """A tiny seeded ViT classifier with its processor, saved in ``folder``."""
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        initializer_range=0.2, **config)).eval()
    processor = transformers.ViTImageProcessorPil(size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


@pytest.mark.parametrize("config,activation", [(dict(num_labels=1), "sigmoid"),
                                               (dict(num_labels=3, problem_type="regression"), "none")])
def test_one_label_and_regression_scores_match_the_transformers_pipeline(config, activation, image_files, tmp_path):
    """transformers' image-classification pipeline takes a sigmoid of one logit (a softmax
    would score every image 1.0) and a regression model's raw outputs; so does the artifact."""
    import vlmedge

    model, processor = tiny_vit(tmp_path / "hf", **config)
    vlmedge.export(str(tmp_path / "hf"), tmp_path / "artifact")
    classifier = vlmedge.load(tmp_path / "artifact")
    assert classifier.activation == activation
    pipe = transformers.pipeline("image-classification", model=model, image_processor=processor)
    for path in image_files[:3]:
        expected = {e["label"]: e["score"] for e in pipe(str(path), top_k=config["num_labels"])}
        got = classifier.classify(str(path), top_k=config["num_labels"])
        assert [p.label for p in got] == list(expected), path.name
        np.testing.assert_allclose([p.score for p in got], list(expected.values()), atol=1e-4, err_msg=path.name)
    scores = classifier.probabilities([str(p) for p in image_files[:3]])
    assert not np.allclose(scores, 1.0) and (activation == "sigmoid" or (scores < 0).any())


def test_id2label_with_a_gap_is_refused_naming_the_missing_ids(tmp_path):
    import vlmedge
    from vlmedge.errors import UnsupportedModelError

    tiny_vit(tmp_path / "hf", id2label={0: "a", 2: "c", 5: "f"})
    with pytest.raises(UnsupportedModelError, match=r"no label for id\(s\) 1 of its 3 labels .*fix id2label in "
                                                    r"config.json to name every id from 0 to 2"):
        vlmedge.export(str(tmp_path / "hf"), tmp_path / "artifact")


def test_weights_that_do_not_fit_the_config_are_named_in_one_sentence(tmp_path):
    """id2label edited to 2 labels over a 3-output head: transformers' error only pointed at a
    report table it had printed."""
    import json

    import vlmedge
    from vlmedge.errors import UnsupportedModelError

    tiny_vit(tmp_path / "hf", id2label={0: "a", 1: "b", 2: "c"})
    config_file = tmp_path / "hf" / "config.json"
    config = json.loads(config_file.read_text())
    config.update(id2label={"0": "a", "1": "b"}, label2id={"a": 0, "b": 1})
    config_file.write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=r"classifier.weight is \[3, \d+\] in the weights but \[2, \d+\] by "
                                                    r"config.json.*id2label names 2 labels") as caught:
        vlmedge.export(str(tmp_path / "hf"), tmp_path / "artifact")
    assert "\n" not in str(caught.value) and "report" not in str(caught.value)


def test_a_source_model_with_non_finite_outputs_is_named(tmp_path):
    """A NaN in the weights made every file 'miss' its gate at tolerance inf (exit 3)."""
    import vlmedge
    from vlmedge.errors import UnsupportedModelError

    model, processor = tiny_vit(tmp_path / "hf")
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(UnsupportedModelError, match=r"gives NaN or infinite logits on 11 of its 11 parity inputs"):
        vlmedge.export(str(tmp_path / "hf"), tmp_path / "artifact")
    assert not (tmp_path / "artifact").exists()


@pytest.mark.parametrize("saved", ["bfloat16 weights", "float16 weights", "config dtype float16"])
def test_half_precision_checkpoints_export_an_fp32_file_equal_to_the_model_in_fp32(saved, image_files, tmp_path):
    """transformers 5 loads a checkpoint in the dtype it was saved in (or config.json names): a
    bf16 checkpoint was traced in bf16 (an ONNX Runtime error blamed on the output folder), an
    fp16 one gave a "model.fp32.onnx" of fp16 weights, judged against an fp16 reference."""
    import json

    import onnx

    import vlmedge

    model, _ = tiny_vit(tmp_path / "hf", num_labels=3)
    if saved.endswith("weights"):
        model.to(getattr(torch, saved.split()[0])).save_pretrained(tmp_path / "hf")
    else:
        config = json.loads((tmp_path / "hf" / "config.json").read_text())
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "dtype": "float16"}))
    vlmedge.export(str(tmp_path / "hf"), tmp_path / "artifact", to="onnx", precision="fp32")
    graph = onnx.load(tmp_path / "artifact" / "onnx" / "model.fp32.onnx").graph
    assert {t.data_type for t in graph.initializer} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    classifier = vlmedge.load(tmp_path / "artifact")
    reference = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    processor = transformers.ViTImageProcessorPil(size={"height": 32, "width": 32})
    for path in image_files[:3]:
        with torch.no_grad():
            expected = reference(**processor(str(path), return_tensors="pt")).logits.softmax(-1).numpy()[0]
        np.testing.assert_allclose(classifier.probabilities(str(path))[0], expected, atol=1e-5, err_msg=path.name)


def _without(folder, drop) -> None:
    from safetensors.numpy import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    assert any(drop(k) for k in weights)
    save_file({k: v for k, v in weights.items() if not drop(k)}, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("left_out", ["a pooler the embedding does not use", "BatchNorm's batch counts",
                                      "an embedding used only in training"])
def test_weights_left_out_that_no_exported_output_uses_are_no_reason_to_refuse(left_out, tmp_path):
    """Refusing every missing weight refused DINO's ViTModel saved without its pooler (the CLS
    token is the embedding), BatchNorm's num_batches_tracked (a buffer) and Wav2Vec2's
    masked_spec_embed (SpecAugment, training only): only weights the graphs' outputs depend on
    (or the two-tower scores read) refuse an export."""
    import vlmedge

    torch.manual_seed(0)
    folder = tmp_path / "hf"
    if left_out.startswith("a pooler"):
        transformers.ViTModel(transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
        transformers.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
        _without(folder, lambda key: key.startswith("pooler."))
        task = "image-embedding"
    elif left_out.startswith("BatchNorm"):
        transformers.ResNetForImageClassification(transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)).save_pretrained(folder)
        transformers.ConvNextImageProcessorPil(size={"shortest_edge": 32}).save_pretrained(folder)
        _without(folder, lambda key: key.endswith("num_batches_tracked"))
        task = "image-classification"
    else:
        from tests.test_coverage_audio_classification import CONV, ENCODER

        config = transformers.Wav2Vec2Config(**{**CONV, **ENCODER, "mask_time_prob": 0.05, "num_labels": 3})
        transformers.Wav2Vec2ForSequenceClassification(config).save_pretrained(folder)
        transformers.Wav2Vec2FeatureExtractor().save_pretrained(folder)
        _without(folder, lambda key: key.endswith("masked_spec_embed"))
        task = "audio-classification"
    options = {"window_seconds": 1.0} if task.startswith("audio") else {}
    artifact = vlmedge.export(str(folder), tmp_path / "artifact", task=task, to="onnx", precision="fp32", **options)
    assert artifact.model_entries()[0]["parity"]["passed"]


@pytest.mark.parametrize("left_out", ["DINOv2's position embeddings", "BatchNorm's running statistics"])
def test_weights_an_output_reads_out_of_autograds_sight_are_refused_too(left_out, tmp_path):
    """Position embeddings vlmedge interpolates once and traces as a constant, and BatchNorm's
    running statistics (buffers), left out of the weights, exported from_pretrained's defaults
    with parity passed (cosine 0.80 and 0.51 to the trained model)."""
    import vlmedge
    from vlmedge.errors import UnsupportedModelError

    torch.manual_seed(0)
    folder = tmp_path / "hf"
    if left_out.startswith("DINOv2"):
        transformers.Dinov2Model(transformers.Dinov2Config(image_size=32, patch_size=8, hidden_size=32, mlp_ratio=2,
                                                           num_hidden_layers=1, num_attention_heads=2)).save_pretrained(folder)
        transformers.BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                                          ).save_pretrained(folder)
        _without(folder, lambda key: key == "embeddings.position_embeddings")
        task, named = "image-embedding", r"\(embeddings.position_embeddings\)"
    else:
        transformers.ResNetForImageClassification(transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)).save_pretrained(folder)
        transformers.ConvNextImageProcessorPil(size={"shortest_edge": 32}).save_pretrained(folder)
        _without(folder, lambda key: key.endswith(("running_mean", "running_var")))
        task, named = "image-classification", r"\(resnet.embedder.embedder.normalization.running_mean, .*running_var"
    with pytest.raises(UnsupportedModelError, match=r"leave \d+ parameter\(s\) of \w+ unset " + named):
        vlmedge.export(str(folder), tmp_path / "artifact", task=task, to="onnx", precision="fp32")
    assert not (tmp_path / "artifact").exists()

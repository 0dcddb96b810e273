"""Coverage of transformers' image-classification mapping: every architecture, made tiny
from its own config class with seeded weights and saved with its own image processor,
either exports with parity (probabilities within 1e-4 of processor -> model -> softmax on
the bundled sample images, same top-5) or is refused with a named UnsupportedModelError.

A crash, a traceback, wrong numbers, or an outcome other than the one expected below fails.
The counts (exported / refused, with reasons) are printed at the end. SigLIP2 (NaFlex) is
refused without image_size and checked at the one it is given, on images its processor
resizes to exactly that size. TimmWrapper runs beside the torchvision stand-in
(tests/torchvision_standin.py, via test_sources_timm.timm_for_transformers), against
transformers' own model and the pixels of timm's eval transform of its resolved data config.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.clip_models import NAFLEX_SIZE, naflex_images, naflex_inputs, naflex_processor
from tests.test_sources_timm import TIMM_MISSING, TimmEvalTransform, timm_for_transformers
from vlmedge.errors import UnsupportedModelError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore")

NUM_LABELS = 10
_STAGES2 = dict(depths=[1, 1], hidden_sizes=[16, 32])
_VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64)
_SWIN = dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)
# timm's data config of the TimmWrapper model: a 32x32 crop of the shortest edge resized to floor(32 / 0.9) = 35
_TIMM_CFG = dict(input_size=[3, 32, 32], interpolation="bicubic", crop_pct=0.9, crop_mode="center", mean=[0.5] * 3,
                 std=[0.5] * 3)
_TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
# model_type -> config overrides that make the model tiny (1-2 layers, width 8-32, 32-64 pixels)
TINY: dict[str, dict] = {
    "beit": _VIT, "data2vec-vision": _VIT, "deit": _VIT, "vit": _VIT, "vit_msn": _VIT, "ijepa": _VIT,
    "dinov2": {**_VIT, "mlp_ratio": 2}, "dinov2_with_registers": {**_VIT, "mlp_ratio": 2, "num_register_tokens": 2},
    "bit": dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_groups=8),
    "clip": dict(vision_config=_VIT, text_config=_TEXT), "metaclip_2": dict(vision_config=_VIT, text_config=_TEXT),
    "siglip": dict(vision_config=_VIT, text_config=_TEXT), "siglip2": dict(vision_config=_VIT, text_config=_TEXT),
    "convnext": dict(num_stages=2, **_STAGES2), "convnextv2": dict(num_stages=2, **_STAGES2),
    "cvt": dict(embed_dim=[8, 16, 32], num_heads=[1, 1, 2], depth=[1, 2, 3]),  # depth[i] > i (HF indexes it)
    "dinat": dict(embed_dim=16, depths=[1, 1], num_heads=[2, 2], kernel_size=3),
    "donut-swin": _SWIN, "swin": _SWIN, "swinv2": _SWIN,
    "efficientnet": dict(image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320),  # = 1280 x 0.25
    "focalnet": dict(embed_dim=16, depths=[1, 1], focal_levels=[2, 2], focal_windows=[3, 3], hidden_sizes=[32, 64],
                     image_size=32),
    "hgnet_v2": dict(embedding_size=16, depths=[1, 1], hidden_sizes=[32, 64], stem_channels=[3, 8, 16],
                     stage_in_channels=[16, 32], stage_mid_channels=[8, 16], stage_out_channels=[32, 64],
                     stage_num_blocks=[1, 1], stage_downsample=[False, True], stage_light_block=[False, False],
                     stage_kernel_size=[3, 3], stage_numb_of_layers=[2, 2]),
    "hiera": dict(embed_dim=8, image_size=[64, 64], depths=[1, 1], num_heads=[1, 2], num_query_pool=1,
                  masked_unit_attention=[True, False]),
    "imagegpt": dict(n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=513),
    "levit": dict(image_size=64, hidden_sizes=[16, 32, 48], num_attention_heads=[1, 2, 3], depths=[1, 1, 1],
                  key_dim=[8, 8, 8]),
    "mobilenet_v1": dict(image_size=32, depth_multiplier=0.25),
    "mobilenet_v2": dict(image_size=32, depth_multiplier=0.25),
    "mobilevit": dict(image_size=64, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
                      num_attention_heads=2),
    "mobilevitv2": dict(image_size=64, width_multiplier=0.25),
    "perceiver": dict(num_latents=8, d_latents=32, d_model=32, num_self_attends_per_block=1, num_self_attention_heads=2,
                      num_cross_attention_heads=1, image_size=32),
    "poolformer": dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 16, 32]),
    "pp_lcnet": dict(scale=0.25, class_expand=32),
    "pvt": dict(image_size=32, depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 16, 32], num_attention_heads=[1, 1, 1, 2]),
    "pvt_v2": dict(image_size=32, depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 16, 32], num_attention_heads=[1, 1, 1, 2]),
    "regnet": dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8),
    "resnet": dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
    "segformer": dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 16, 32], num_attention_heads=[1, 1, 1, 2]),
    "shieldgemma2": dict(text_config=dict(vocab_size=10240, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, head_dim=16),
                         vision_config=_VIT, mm_tokens_per_image=4),
    "swiftformer": dict(image_size=32, depths=[1, 1, 1, 1], embed_dims=[8, 16, 16, 32]),
    "textnet": dict(stem_out_channels=8, hidden_sizes=[8, 8, 16, 16, 32], image_size=[32, 32]),
    "timm_wrapper": dict(architecture="vit_tiny_patch16_224", model_args=dict(img_size=32, depth=1),
                         pretrained_cfg=_TIMM_CFG),
}
# processor kind -> settings giving a 32x32 (or 64x64) output, for kinds whose defaults are bigger
SQUARE = {"height": 32, "width": 32}
PROCESSOR: dict[str, dict] = {
    "ViT": {"size": SQUARE}, "Beit": {"size": {"height": 36, "width": 36}, "do_center_crop": True, "crop_size": SQUARE},
    "Bit": {"size": {"shortest_edge": 36}, "crop_size": SQUARE}, "CLIP": {"size": {"shortest_edge": 36}, "crop_size": SQUARE},
    "ConvNext": {"size": {"shortest_edge": 32}}, "DeiT": {"size": {"height": 36, "width": 36}, "crop_size": SQUARE},
    "Donut": {"size": SQUARE}, "EfficientNet": {"size": SQUARE, "rescale_offset": True},
    "Levit": {"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}},
    "MobileNetV1": {"size": {"shortest_edge": 36}, "crop_size": SQUARE},
    "MobileNetV2": {"size": {"shortest_edge": 36}, "crop_size": SQUARE},
    "MobileViT": {"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}},
    "Perceiver": {"size": SQUARE, "crop_size": {"height": 36, "width": 36}},
    "PoolFormer": {"size": {"shortest_edge": 32}, "crop_size": SQUARE}, "Pvt": {"size": SQUARE},
    "Segformer": {"size": SQUARE}, "Siglip": {"size": SQUARE}, "Siglip2": {},
    # ImageGPT: 8x8 pixels (its tiny config's 64 positions), each mapped to the nearest of 512 seeded colours
    "ImageGPT": {"size": {"height": 8, "width": 8},
                 "clusters": np.random.default_rng(0).uniform(-1, 1, (512, 3)).round(4).tolist()},
    "TextNet": {"size": {"shortest_edge": 32}, "do_center_crop": True, "crop_size": SQUARE},
    "Gemma3": {"size": SQUARE}, "TimmWrapper": {"pretrained_cfg": _TIMM_CFG},
}
# Model types without a processor in transformers' mapping: the one their hub models are saved with.
FALLBACK_PROCESSOR = {"dinov2_with_registers": "Bit", "hgnet_v2": "ViT"}
HIERA_LIKE = {"hiera", "levit", "mobilevit", "mobilevitv2"}  # 64x64 models
# architecture -> words of the expected refusal; every other architecture must export with parity.
REFUSED = {
    "DinatForImageClassification": "natten",
    "PPLCNetForImageClassification": "torchvision",
    "ShieldGemma2ForImageClassification": "text prompt",
    "Siglip2ForImageClassification": "--image-size",
}
RESULTS: dict[str, str] = {}


def architectures() -> list[tuple[str, str]]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    pairs = []
    for model_type, names in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.items():
        for name in names if isinstance(names, (tuple, list)) else [names]:
            pairs.append((model_type, name))
    return pairs


def processor_for(model_type: str):
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
    name = names.get("pil") or names.get("torchvision")
    kind = FALLBACK_PROCESSOR.get(model_type) or name.removesuffix("Pil").removesuffix("ImageProcessor")
    settings = dict(PROCESSOR.get(kind, {}))
    if model_type in HIERA_LIKE and kind in ("ViT", "Bit", "MobileViT", "Levit"):
        settings = PROCESSOR[kind] if kind in ("MobileViT", "Levit") else {
            "size": {"shortest_edge": 72} if kind == "Bit" else {"height": 64, "width": 64},
            **({"crop_size": {"height": 64, "width": 64}} if kind == "Bit" else {})}
    cls = getattr(transformers, f"{kind}ImageProcessorPil", None) or getattr(transformers, f"{kind}ImageProcessor", None)
    return cls, settings


def tiny_model(model_type: str, arch: str, size: int = 32, inputs: dict | None = None):
    """A tiny seeded model of the real class whose logits differ by class and by image
    (`inputs`: what its forward takes, where that is not pixel values of size x size)."""
    from transformers import CONFIG_MAPPING

    torch.manual_seed(0)
    labels = {i: f"class_{i}" for i in range(NUM_LABELS)}
    config = CONFIG_MAPPING[model_type](**TINY[model_type], num_labels=NUM_LABELS, id2label=labels,
                                        label2id={v: k for k, v in labels.items()})
    config.architectures = [arch]
    model = getattr(transformers, arch)(config).eval()
    if model_type == "imagegpt" and inputs is None:  # it classifies colour-cluster ids, not pixels
        inputs = {"input_ids": torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(1))}
    spread_activations(model, size, inputs)
    return model


def spread_activations(model, size: int, inputs: dict | None = None) -> None:
    """Variance-keeping weights and batch-norm statistics of seeded noise images (or `inputs`),
    so that deep conv stacks do not fade to zero features; then heads scaled to logits of about
    +-3, far enough apart that float noise cannot reorder the top 5."""
    images = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    inputs = inputs or {"pixel_values": images}
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == NUM_LABELS]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and module not in heads:
                module.weight.normal_(0, 1.0 / module.weight[0].numel() ** 0.5)
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # a cumulative average over the batches below
        try:
            model.train()(**inputs)
        except Exception:  # noqa: BLE001 - a model whose training forward needs labels keeps its statistics
            pass
        model.eval()
        features = []
        hooks = [head.register_forward_hook(lambda mod, args, out: features.append(args[0])) for head in heads]
        try:
            model(**inputs)
        except Exception:  # noqa: BLE001 - the export test reports a model whose forward fails
            pass
        for hook in hooks:
            hook.remove()
        for head, x in zip(heads, features):
            scale = float(x.reshape(-1, head.in_features).std(0).mean()) or 1.0
            head.weight.normal_(0, 3.0 / (head.in_features ** 0.5 * scale))
            head.bias.zero_() if head.bias is not None else None


def hf_probabilities(model, processor, path) -> np.ndarray:
    from transformers.image_utils import load_image

    from vlmedge.exporters.sources.hf.classifier import logits_field

    inputs = processor(load_image(str(path)), return_tensors="pt")
    if "input_ids" in inputs:  # ImageGPT: the processor's own colour clusters
        with torch.no_grad():
            return model(input_ids=inputs["input_ids"]).logits.softmax(-1).numpy()[0]
    pixels = inputs["pixel_values"]
    field = logits_field(model, type(model).__name__, NUM_LABELS, *pixels.shape[-2:])
    with torch.no_grad():
        return getattr(model(pixel_values=pixels), field).softmax(-1).numpy()[0]


@pytest.fixture(scope="module")
def sample_images():
    from vlmedge.exporters.samples import sample_images

    return sample_images()


@pytest.mark.parametrize("model_type, arch", architectures(), ids=[a for _, a in architectures()])
def test_architecture_exports_with_parity_or_is_refused(model_type, arch, sample_images, tmp_path):
    """TimmWrapper runs beside the torchvision stand-in (tests/torchvision_standin.py), which
    lets timm load; without it, or without timm, its export is refused (see below)."""
    if model_type != "timm_wrapper":
        return check_architecture(model_type, arch, sample_images, tmp_path)
    with timm_for_transformers() as timm:
        if timm is None:
            pytest.skip(TIMM_MISSING)
        check_architecture(model_type, arch, sample_images, tmp_path, timm)


def check_architecture(model_type, arch, sample_images, tmp_path, timm=None) -> None:
    import vlmedge
    from vlmedge.exporters.pipeline import export

    torch.set_num_threads(1)
    assert model_type in TINY, f"{model_type} has no tiny configuration in this test; add one"
    folder = tmp_path / "hf"
    try:
        model = tiny_model(model_type, arch, 64 if model_type in HIERA_LIKE else 32)
    except ImportError as exc:  # the model class needs a package (natten, timm): export must refuse it too
        model, missing = None, exc
    cls, settings = processor_for(model_type)
    processor = None
    if model is not None:
        model.save_pretrained(folder)
        try:
            processor = cls(**settings)
        except ImportError:
            processor = None
    if processor is not None:
        processor.save_pretrained(folder)
    elif model is not None:  # a processor class that cannot be built here: its config as saved on the hub
        (folder / "preprocessor_config.json").write_text(f'{{"image_processor_type": "{cls.__name__}"}}')
        if model_type == "timm_wrapper":  # its processor builds torchvision transforms, which the stand-in cannot
            processor = TimmEvalTransform(timm, TINY[model_type]["pretrained_cfg"])
    else:
        folder.mkdir()
        (folder / "config.json").write_text(f'{{"model_type": "{model_type}", "architectures": ["{arch}"]}}')
        (folder / "preprocessor_config.json").write_text('{"image_processor_type": "ViTImageProcessor"}')
    try:  # OpenVINO too: the README's table promises both targets (EfficientNet's pooler did not convert)
        export(str(folder), tmp_path / "artifact", to=("onnx", "openvino"))
    except UnsupportedModelError as exc:
        RESULTS[arch] = f"refused: {exc}"
        assert arch in REFUSED, f"{arch} was refused: {exc}"
        assert REFUSED[arch] in str(exc) and "\n" not in str(exc).strip(), str(exc)
        return
    assert arch not in REFUSED, f"{arch} exported but the test expects a refusal ({REFUSED[arch]})"
    classifier = vlmedge.load(tmp_path / "artifact")
    assert {e["target"] for e in classifier.model.artifact.model_entries() if e["parity"]["passed"]} == \
        {"onnx", "openvino"}, f"{arch}: a target is missing"
    worst = 0.0
    for path in sample_images:
        expected = hf_probabilities(model, processor, path)
        assert expected.max() > 1.5 / NUM_LABELS, f"{arch}'s tiny model gives near-uniform probabilities: {expected}"
        got = classifier.probabilities(str(path))[0]
        worst = max(worst, float(np.abs(got - expected).max()))
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"{arch} on {path.name}")
        top5 = [p.index for p in classifier.classify(path, top_k=5)]
        assert top5 == list(np.argsort(-expected, kind="stable")[:5]), f"{arch} on {path.name}"
    RESULTS[arch] = f"exported: max prob diff {worst:.1e}"


def test_siglip2_classifier_exports_at_the_chosen_resolution(sample_images, tmp_path):
    """Siglip2ForImageClassification at image_size=NAFLEX_SIZE: probabilities within 1e-4 of the
    Siglip2 processor -> model -> softmax, same top 5, on images the processor resizes to that size."""
    import vlmedge
    from vlmedge.exporters.pipeline import export

    torch.set_num_threads(1)
    arch = "Siglip2ForImageClassification"
    processor = naflex_processor()
    images = naflex_images(sample_images)
    inputs = naflex_inputs(processor, images)
    model = tiny_model("siglip2", arch, inputs=inputs)
    model.save_pretrained(tmp_path / "hf")
    processor.save_pretrained(tmp_path / "hf")
    height, width = NAFLEX_SIZE
    export(str(tmp_path / "hf"), tmp_path / "artifact", image_size=f"{height}x{width}")
    classifier = vlmedge.load(tmp_path / "artifact")
    assert classifier.model.artifact.manifest["source"]["naflex"]["grid"] == [height // 8, width // 8]
    with torch.no_grad():
        expected = model(**inputs).logits.softmax(-1).numpy()
    assert expected.max(1).min() > 1.5 / NUM_LABELS, f"{arch}'s tiny model gives near-uniform probabilities"
    got = classifier.probabilities(images)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    for image, row in zip(images, expected):
        assert [p.index for p in classifier.classify(image, top_k=5)] == list(np.argsort(-row, kind="stable")[:5])
    RESULTS[f"{arch} at {height}x{width}"] = f"exported: max prob diff {float(np.abs(got - expected).max()):.1e}"


def test_counts(capsys):
    """Prints the table and the counts of the runs above (it runs last in this file)."""
    if not RESULTS:
        pytest.skip("no architecture ran")
    exported = sorted(a for a, r in RESULTS.items() if r.startswith("exported"))
    refused = sorted(a for a, r in RESULTS.items() if r.startswith("refused"))
    with capsys.disabled():
        print(f"\nimage-classification coverage: {len(exported)} exported with parity, {len(refused)} refused")
        for arch in sorted(RESULTS):
            print(f"  {arch:48s} {RESULTS[arch][:160]}")


def test_supported_architectures_agree_with_the_exports():
    """supported_architectures() (the export's checks, without exporting) names the same
    architectures as supported as the exports above, and the same refusals."""
    if not RESULTS:
        pytest.skip("no architecture ran")
    from vlmedge.exporters.sources.support import supported_architectures

    with timm_for_transformers():  # where TimmWrapper ran: beside the stand-in
        rows = {row.architecture: row for row in supported_architectures("image-classification")}
    assert set(rows) == {arch for _, arch in architectures()}
    for arch, result in RESULTS.items():
        if arch not in rows:  # a run with options (SigLIP2 at image_size=), which supported_architectures() is not
            continue
        assert rows[arch].supported == result.startswith("exported"), (arch, rows[arch].reason, result)
        if not rows[arch].supported:
            assert REFUSED[arch] in rows[arch].reason, (arch, rows[arch].reason)


def test_timm_wrapper_without_torchvision_is_refused_in_one_sentence(tmp_path):
    """A TimmWrapper folder where torchvision does not load (no stand-in), and so neither does
    timm: the export names what failed and what to install, before reading any weights."""
    import json

    from vlmedge.exporters.pipeline import export

    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision loads here, so timm does too")
    except Exception:  # noqa: BLE001 - missing, or built for another torch
        pass
    folder = tmp_path / "hf"
    folder.mkdir()
    config = {"model_type": "timm_wrapper", "architectures": ["TimmWrapperForImageClassification"],
              **TINY["timm_wrapper"], "num_classes": 2, "label_names": ["a", "b"]}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="need timm, which cannot be imported because") as caught:
        export(str(folder), tmp_path / "artifact")
    assert "\n" not in str(caught.value) and "install" in str(caught.value), str(caught.value)
    assert not (tmp_path / "artifact").exists() or not any((tmp_path / "artifact").iterdir())


def test_pplcnet_logits_are_found_in_its_output(tmp_path):
    """PPLCNet returns its logits as last_hidden_state: with a processor vlmedge reproduces it
    exports with parity."""
    import vlmedge
    from vlmedge.exporters.pipeline import export

    model = tiny_model("pp_lcnet", "PPLCNetForImageClassification")
    model.save_pretrained(tmp_path / "hf")
    processor = transformers.ViTImageProcessorPil(size=SQUARE)
    processor.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").read_text()
    export(str(tmp_path / "hf"), tmp_path / "artifact")
    classifier = vlmedge.load(tmp_path / "artifact")
    from vlmedge.exporters.samples import sample_images

    for path in sample_images():
        np.testing.assert_allclose(classifier.probabilities(str(path))[0], hf_probabilities(model, processor, path),
                                   atol=1e-4)


def test_a_failed_trace_is_one_sentence_without_the_graph_dump(tmp_path, capfd):
    """torch prints the whole graph when it cannot export an operator; vlmedge keeps that out
    of the terminal and raises one UnsupportedModelError naming the operator."""
    from vlmedge.exporters.onnx import export_onnx
    from vlmedge.exporters.spec import GraphSpec

    class AntialiasedResize(torch.nn.Module):
        def forward(self, pixel_values):
            return torch.nn.functional.interpolate(pixel_values, size=(5, 5), mode="bicubic", antialias=True)

    graph = GraphSpec(name="model", module=AntialiasedResize(), input_names=["pixel_values"], output_names=["out"],
                      example_inputs={"pixel_values": torch.randn(2, 3, 16, 16)}, dynamic_axes={}, compare={})
    capfd.readouterr()
    with pytest.raises(UnsupportedModelError, match=r"torch.onnx.export cannot export graph 'model'") as info:
        export_onnx(graph, tmp_path / "model.onnx")
    printed = capfd.readouterr()
    assert "\n" not in str(info.value) and len(printed.out) + len(printed.err) < 2000, printed


def _linear_onnx(path, op="MatMul"):
    """A 64 KiB ONNX file (one 128x128 float weight) for the optimisation step to work on."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((128, 128), np.float32), "w")
    graph = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 128])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_a_failed_graph_optimisation_is_one_export_error_naming_the_step(tmp_path):
    """ONNX Runtime's optimisation step raises its own types; vlmedge names the step."""
    from vlmedge.errors import ExportError
    from vlmedge.exporters.onnx import _optimize_basic

    _linear_onnx(tmp_path / "model.onnx", op="NoSuchOp")  # ORT cannot load what it has no kernel for
    with pytest.raises(ExportError, match=r"ONNX Runtime's graph optimisation of model.onnx failed \(.*\); check"):
        _optimize_basic(tmp_path / "model.onnx")


def test_a_full_disk_during_graph_optimisation_says_it_is_the_disk(tmp_path):
    """ORT reports a full disk as InvalidProtobuf, without errno or text to tell; the free
    space of the output folder's filesystem does."""
    import subprocess

    from vlmedge.errors import ExportError
    from vlmedge.exporters.onnx import _optimize_basic

    _linear_onnx(tmp_path / "model.onnx")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        (disk / "model.onnx").write_bytes((tmp_path / "model.onnx").read_bytes())
        with pytest.raises(ExportError, match=r"No space left on the disk holding .*model.onnx; free some space") \
                as info:
            _optimize_basic(disk / "model.onnx")
        assert not (disk / "model.opt.onnx").exists() and isinstance(info.value.__cause__, OSError)
    finally:
        subprocess.run(["umount", str(disk)], check=True)

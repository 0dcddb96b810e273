"""Issue 5: image embeddings and attention maps from self-supervised encoders (DINO, DINOv2
with and without registers, MAE, Swin, DeiT, BEiT), checked from image files against the
Hugging Face model run on the HF processor's output; export at another resolution; and
the `embed` and `predict --attention` commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SAMPLES = Path(__file__).resolve().parent.parent / "exporters" / "sample_data"

# family -> (architecture, how its authors pool, tokens before the patches)
FAMILIES = {
    "dino": ("ViTModel", "cls", 1),
    "dinov2": ("Dinov2Model", "cls+mean", 1),
    "dinov2-registers": ("Dinov2WithRegistersModel", "cls+mean", 1 + 3),
    "mae": ("ViTMAEModel", "mean", 1),
    "swin": ("SwinModel", "pooled", 0),
    "deit": ("DeiTModel", "cls", 2),
    "beit": ("BeitModel", "pooled", 1),
    "dinov3": ("DINOv3ViTModel", "cls", 1 + 2),
}


def tiny_encoder(family: str):
    """A tiny seeded encoder of the real class and the processor it is saved with."""
    import transformers as t

    torch.manual_seed(0)
    vit = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, initializer_range=0.2)
    dinov2 = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  mlp_ratio=2, initializer_range=0.2)
    # DINOv2's processor: shortest edge 256 then a 224 crop, scaled down
    bit_crop = t.BitImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, resample=3,
                                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    vit_bicubic = t.ViTImageProcessorPil(size={"height": 32, "width": 32}, resample=3)
    if family == "dino":
        return t.ViTModel(t.ViTConfig(**vit)), vit_bicubic
    if family == "dinov2":
        return t.Dinov2Model(t.Dinov2Config(**dinov2)), bit_crop
    if family == "dinov2-registers":
        return t.Dinov2WithRegistersModel(t.Dinov2WithRegistersConfig(num_register_tokens=3, **dinov2)), bit_crop
    if family == "mae":  # the checkpoint keeps MAE's pre-training mask ratio; the export must ignore it
        return t.ViTMAEModel(t.ViTMAEConfig(mask_ratio=0.75, **vit)), t.ViTImageProcessorPil(size={"height": 32, "width": 32})
    if family == "swin":
        config = t.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
                              initializer_range=0.2)
        return t.SwinModel(config), vit_bicubic
    if family == "deit":
        return t.DeiTModel(t.DeiTConfig(**vit)), t.DeiTImageProcessorPil(
            size={"height": 38, "width": 38}, crop_size={"height": 32, "width": 32}, resample=3)
    if family == "beit":
        return t.BeitModel(t.BeitConfig(use_relative_position_bias=True, use_mean_pooling=True, **vit)), \
            t.BeitImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False, resample=3)
    if family == "dinov3":  # RoPE positions, 2 register tokens
        return t.DINOv3ViTModel(t.DINOv3ViTConfig(num_register_tokens=2, **vit)), vit_bicubic
    raise ValueError(family)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            folder = tmp_path_factory.mktemp(f"enc-{family}")
            model, processor = tiny_encoder(family)
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
            made[family] = folder
        return made[family]

    return make


@pytest.fixture(scope="module")
def exported(encoder_dir, tmp_path_factory):
    import vlmedge

    made: dict[tuple, Path] = {}

    def make(family: str, image_size=None) -> Path:
        key = (family, image_size)
        if key not in made:
            out = tmp_path_factory.mktemp(f"art-{family}") / "artifact"
            vlmedge.export(str(encoder_dir(family)), out, image_size=image_size)
            made[key] = out
        return made[key]

    return make


def hf_outputs(folder: Path, paths: list[Path], family: str, processor_args: dict | None = None,
               interpolate: bool = False) -> dict[str, np.ndarray]:
    """What the source gives: load_image -> HF processor -> HF model (eager attention)."""
    from transformers.image_utils import load_image

    arch, _, prefix = FAMILIES[family]
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    model = getattr(transformers, arch).from_pretrained(folder, attn_implementation="eager").eval()
    pixels = processor([load_image(str(p)) for p in paths], return_tensors="pt", **(processor_args or {}))["pixel_values"]
    n, _, height, width = pixels.shape
    kwargs = {}
    if family != "swin":
        kwargs["output_attentions"] = True
    if interpolate:
        kwargs["interpolate_pos_encoding"] = True
    if family == "mae":  # feature-encoder use: nothing masked, patches in their own order
        model.config.mask_ratio = 0.0
        patches = (height // 8) * (width // 8)
        kwargs["noise"] = torch.arange(patches, dtype=torch.float32).expand(n, patches)
    with torch.no_grad():
        out = model(pixel_values=pixels, **kwargs)
    hidden = out.last_hidden_state.numpy()
    h, w = height // 8, width // 8  # patch 8; Swin: patch 4, then one 2x2 merge
    grid = hidden[:, prefix:].reshape(n, h, w, hidden.shape[-1])
    result = {"patch_tokens": grid, "mean": grid.reshape(n, h * w, -1).mean(1)}
    if family != "swin":
        result["cls"] = hidden[:, 0]
        result["cls+mean"] = np.concatenate([result["cls"], result["mean"]], axis=1)
        last = out.attentions[-1].numpy()
        result["attentions"] = last[:, :, 0, prefix:].reshape(n, last.shape[1], h, w)
    if family in ("swin", "beit"):
        result["pooled"] = out.pooler_output.numpy()
    if family == "mae":
        assert hidden.shape[1] == 1 + h * w and (out.ids_restore.numpy() == np.arange(h * w)).all()
    return result


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_close(got: np.ndarray, expected: np.ndarray, what: str, atol: float = 1e-4) -> None:
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    assert cosine(got, expected).min() >= 0.99999, f"{what}: cosine {cosine(got, expected).min():.7f}"
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol, err_msg=what)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_embeddings_and_attention_match_hugging_face(family, exported, encoder_dir, image_files):
    import vlmedge

    encoder = vlmedge.load(exported(family))
    expected = hf_outputs(encoder_dir(family), image_files, family)
    paths = [str(p) for p in image_files]
    _, default_pooling, prefix = FAMILIES[family]
    assert encoder.default_pooling == default_pooling
    assert encoder.info["num_prefix_tokens"] == prefix

    for pooling in encoder.poolings:
        got, grid = encoder.embed(paths, pooling=pooling, normalize=False, patch_tokens=True)
        assert got.dtype == np.float32
        assert_close(got, expected[pooling], f"{family} {pooling}")
        assert_close(grid, expected["patch_tokens"], f"{family} patch grid")
    assert set(encoder.poolings) == {p for p in ("cls", "mean", "cls+mean", "pooled") if p in expected}

    default = encoder.embed(paths)
    reference = expected[default_pooling] / np.linalg.norm(expected[default_pooling], axis=1, keepdims=True)
    assert_close(default, reference, f"{family} default embedding", atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(default, axis=1), 1.0, atol=1e-6)

    if "attentions" in expected:
        maps = encoder.attention_maps(paths)
        np.testing.assert_allclose(maps, expected["attentions"], rtol=0, atol=1e-4, err_msg=f"{family} attention")
        assert maps.shape[2:] == tuple(encoder.info["grid"])
    else:
        from vlmedge.errors import ArtifactError

        with pytest.raises(ArtifactError, match="no attention maps"):
            encoder.attention_maps(paths[0])

    (entry,) = encoder.model.artifact.model_entries()
    report = entry["parity"]
    assert report["passed"] and report["samples"] >= 8
    assert set(report["outputs"]) == set(encoder.outputs)


def test_unavailable_pooling_is_a_clear_error(exported):
    import vlmedge
    from vlmedge.errors import UsageError

    swin = vlmedge.load(exported("swin"))
    with pytest.raises(UsageError, match="not available for swin"):
        swin.embed(SAMPLES / "red-circle.jpg", pooling="cls")
    with pytest.raises(UsageError, match="Unknown pooling 'max'; choose one of mean, pooled.$"):  # swin's own choices
        swin.embed(SAMPLES / "red-circle.jpg", pooling="max")
    with pytest.raises(UsageError, match="normalize must be True or False, not 'no'"):  # a true string
        swin.embed(SAMPLES / "red-circle.jpg", normalize="no")
    from vlmedge.bulk.job import make_job

    with pytest.raises(UsageError, match="normalize must be True or False, not 'false'"):
        make_job(exported("swin"), "embed", normalize="false")


@pytest.mark.parametrize("family", ["dinov2", "dinov2-registers"])
def test_dinov2_at_another_resolution_matches_hugging_face(family, exported, encoder_dir, image_files):
    """Exported at 48 (native 32, processor 32): the position embeddings are interpolated as
    DINOv2 does it (bicubic; antialiased with registers), and the processor's resize and crop
    scale with it (shortest edge 36 -> 54, crop 32 -> 48)."""
    import vlmedge

    encoder = vlmedge.load(exported(family, 48))
    image = encoder.model.artifact.manifest["preprocess"]["image"]
    assert image["size"] == {"shortest_edge": 54} and image["crop_size"] == {"height": 48, "width": 48}
    assert encoder.info["grid"] == [6, 6] and encoder.info["position_embeddings_interpolated"]
    expected = hf_outputs(encoder_dir(family), image_files, family,
                          processor_args={"size": {"shortest_edge": 54}, "crop_size": {"height": 48, "width": 48}})
    paths = [str(p) for p in image_files]
    got, grid = encoder.embed(paths, pooling="cls+mean", normalize=False, patch_tokens=True)
    assert_close(got, expected["cls+mean"], f"{family}@48 cls+mean")
    assert_close(grid, expected["patch_tokens"], f"{family}@48 patch grid")
    np.testing.assert_allclose(encoder.attention_maps(paths), expected["attentions"], rtol=0, atol=1e-4)


def test_dinov3_at_another_resolution_matches_hugging_face(exported, encoder_dir, image_files):
    """DINOv3's rotary positions follow the patch grid: exported at 40x48 (native 32) the graph
    gives what the source gives at 40x48, with nothing interpolated."""
    import vlmedge

    encoder = vlmedge.load(exported("dinov3", (40, 48)))
    assert encoder.info["grid"] == [5, 6] and encoder.info["position_embeddings"] == "rope"
    assert not encoder.info["position_embeddings_interpolated"] and encoder.info["num_register_tokens"] == 2
    expected = hf_outputs(encoder_dir("dinov3"), image_files, "dinov3",
                          processor_args={"size": {"height": 40, "width": 48}})
    got, grid = encoder.embed([str(p) for p in image_files], normalize=False, patch_tokens=True)
    assert_close(got, expected["cls"], "dinov3@40x48 cls")
    assert_close(grid, expected["patch_tokens"], "dinov3@40x48 patch grid")
    np.testing.assert_allclose(encoder.attention_maps([str(p) for p in image_files]), expected["attentions"], rtol=0,
                               atol=1e-4)


def test_dinov3_with_its_own_torchvision_processor_matches_hugging_face(image_files, tmp_path):
    """DINOv3's checkpoints ship DINOv3ViTImageProcessorFast, a class that exists only for
    torchvision: the export reads its saved config, and the artifact embeds files as the model
    does on that processor's pixels (its steps run with torch's kernels, torchvision being
    absent here: tests.test_preprocess_image_classes.dinov3_reference)."""
    import json

    import vlmedge
    from tests.test_preprocess_image_classes import DINOV3, dinov3_reference

    model, _ = tiny_encoder("dinov3")
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    config = {**DINOV3["bilinear"], "size": {"height": 32, "width": 32}}
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    artifact = vlmedge.export(str(folder), tmp_path / "artifact", to="onnx")
    assert artifact.manifest["preprocess"]["image"]["resize_after_rescale"] is True
    pixels = torch.from_numpy(np.stack([dinov3_reference(path, config) for path in image_files]))
    with torch.no_grad():
        hidden = model.eval()(pixel_values=pixels).last_hidden_state.numpy()
    got, grid = vlmedge.load(artifact.root).embed([str(p) for p in image_files], normalize=False, patch_tokens=True)
    assert_close(got, hidden[:, 0], "dinov3 cls")
    assert_close(grid, hidden[:, 3:].reshape(len(image_files), 4, 4, -1), "dinov3 patch grid")


def test_vit_at_a_non_square_resolution(exported, encoder_dir, image_files):
    """ViT needs interpolate_pos_encoding=True off its native size; the grid is (h, w) = (5, 6)."""
    import vlmedge

    encoder = vlmedge.load(exported("dino", (40, 48)))
    assert encoder.info["grid"] == [5, 6]
    expected = hf_outputs(encoder_dir("dino"), image_files, "dino",
                          processor_args={"size": {"height": 40, "width": 48}}, interpolate=True)
    got, grid = encoder.embed([str(p) for p in image_files], normalize=False, patch_tokens=True)
    assert_close(got, expected["cls"], "dino@40x48 cls")
    assert_close(grid, expected["patch_tokens"], "dino@40x48 patch grid")
    assert encoder.attention_maps(str(image_files[0])).shape == (1, 2, 5, 6)


def test_export_refuses_a_size_off_the_patch_grid(encoder_dir, tmp_path):
    import vlmedge
    from vlmedge.errors import ExportError

    with pytest.raises(ExportError, match="multiple of"):
        vlmedge.export(str(encoder_dir("dino")), tmp_path / "out", image_size=36)
    assert not (tmp_path / "out").exists()


def vlmedge_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmedge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


def test_embed_folder_skips_a_corrupt_file(exported, tmp_path):
    import shutil

    import vlmedge

    artifact = exported("dinov2-registers")
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for name in ("red-circle.jpg", "yellow-star.png"):
        shutil.copy(SAMPLES / name, folder / name)
    for name in ("white-triangle-grayscale.png", "purple-cross-portrait.jpg", "green-square-rgba.png"):
        shutil.copy(SAMPLES / name, folder / "nested" / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    (folder / os.fsdecode(b"bro\xfeken.jpg")).write_bytes(b"x")  # a name that is not UTF-8: escaped, not fatal
    out = tmp_path / "out" / "embeddings.npy"

    result = vlmedge_cli("embed", artifact, folder, "--out", out, "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert "broken.jpg" in result.stderr and "skipped 2" in result.stderr
    # notes.txt is no image: left out of the rows, and said so (a folder of mixed files lost them silently)
    assert "left out 1 file(s) of the folders that are not image files (.txt 1)" in " ".join(result.stderr.split())

    embeddings = np.load(out)
    listing = json.loads((tmp_path / "out" / "embeddings.files.json").read_text())
    expected_files = [folder / "red-circle.jpg", folder / "yellow-star.png",
                      folder / "nested" / "white-triangle-grayscale.png",
                      folder / "nested" / "green-square-rgba.png", folder / "nested" / "purple-cross-portrait.jpg"]
    expected_files.sort(key=lambda p: p.relative_to(folder).parts)
    assert listing["files"] == [str(p) for p in expected_files]
    assert [s["input"] for s in listing["skipped"]] == [str(folder / "broken.jpg"), str(folder / "bro\\xfeken.jpg")]
    assert f"Image file {folder}/bro\\xfeken.jpg is not a readable" in listing["skipped"][1]["error"]
    assert embeddings.shape == (5, 64) and embeddings.dtype == np.float32
    assert listing["pooling"] == "cls+mean" and listing["shape"] == [5, 64]
    direct = vlmedge.load(artifact).embed([str(p) for p in expected_files])
    np.testing.assert_allclose(embeddings, direct, atol=1e-6)

    # --text is for CLIP artifacts only
    result = vlmedge_cli("embed", artifact, folder, "--out", tmp_path / "t.npy", "--text", "a red circle")
    assert result.returncode == 2 and "CLIP" in result.stderr
    assert not (tmp_path / "t.npy").exists()


def test_predict_attention_writes_png(exported, tmp_path):
    artifact = exported("dino")
    png = tmp_path / "attention.png"
    result = vlmedge_cli("predict", artifact, SAMPLES / "red-circle.jpg", "--attention", png)
    assert result.returncode == 0, result.stderr
    assert "cls" in result.stdout and "red-circle.jpg" in result.stdout
    with Image.open(png) as sheet:
        assert sheet.format == "PNG" and sheet.width >= 4 * 224 and sheet.height >= 224

    result = vlmedge_cli("predict", artifact, SAMPLES / "red-circle.jpg", SAMPLES / "yellow-star.png",
                         "--attention", png, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["attention"] for r in rows] == [str(tmp_path / "attention-red-circle.png"),
                                              str(tmp_path / "attention-yellow-star.png")]
    assert all(Path(r["attention"]).is_file() for r in rows) and rows[0]["dim"] == 32
    # the values embed() and `embed --out` give (they were the unnormalised ones), with the norm before
    import vlmedge

    encoder = vlmedge.load(artifact)
    images = [SAMPLES / "red-circle.jpg", SAMPLES / "yellow-star.png"]
    unit, raw = (encoder.embed(images, normalize=normalize) for normalize in (True, False))
    for row, u, r in zip(rows, unit, raw):
        assert row["first"] == [round(float(v), 5) for v in u[:4]] and row["norm"] == pytest.approx(np.linalg.norm(r))
    # every input's sheet is checked before any is drawn: one that cannot be written left the
    # sheets before it written and no results printed
    os.mkfifo(tmp_path / "fifo-yellow-star.png")
    refused = vlmedge_cli("predict", artifact, *images, "--attention", tmp_path / "fifo.png")
    assert refused.returncode == 2 and "fifo-yellow-star.png is not a regular file" in refused.stderr
    assert not (tmp_path / "fifo-red-circle.png").exists()
    # nor is a sheet an input, which it replaced (`predict img.png --attention img.png`)
    own = tmp_path / "own.png"
    shutil.copy(SAMPLES / "yellow-star.png", own)
    refused = vlmedge_cli("predict", artifact, own, "--attention", own)
    assert refused.returncode == 2 and "is one of the inputs, which it would replace" in refused.stderr
    refused = vlmedge_cli("predict", artifact, own, "--attention", tmp_path / "sheet.jpg")  # it named render_attention
    assert refused.returncode == 2 and "Error: --attention writes PNG files; name it .png, not sheet.jpg." in refused.stderr
    assert own.read_bytes() == (SAMPLES / "yellow-star.png").read_bytes()


def test_inputs_of_one_name_get_attention_sheets_of_their_own():
    """The numbered name of a second `a.jpg` was that of an input named `a-2.png`: one sheet lost."""
    from vlmedge.cli.rows import attention_paths

    sheets = attention_paths(Path("s.png"), ["in1/a.jpg", "a-2.png", "in2/a.jpg", "in3/a.jpg"])
    assert [p.name for p in sheets] == ["s-a.png", "s-a-2.png", "s-a-3.png", "s-a-4.png"]


def test_render_attention_refuses_what_it_cannot_draw_or_write_before_drawing(exported, tmp_path):
    """A folder (IsADirectoryError), a missing folder under /proc (FileNotFoundError), panel_size 0
    (a 34 x 29 sheet), alpha 2 (an extrapolated blend) and a .jpg name (PNG bytes in it) went through."""
    import vlmedge
    from vlmedge.errors import OutputError, UsageError

    encoder = vlmedge.load(exported("dino"))
    image = SAMPLES / "red-circle.jpg"
    for kwargs, message in [({"path": tmp_path}, r"writes a PNG; name the file \.png"),
                            ({"path": tmp_path / "sheet.jpg"}, r"writes a PNG; name the file \.png"),
                            ({"panel_size": 0}, "panel_size must be a whole number of pixels from 16 up, not 0"),
                            ({"alpha": 2}, r"alpha must be a number from 0 \(the image only\) to 1"),
                            ({"columns": 0}, "columns must be a positive whole number or None, not 0")]:
        with pytest.raises(UsageError, match=message):
            encoder.render_attention(image, **{"path": tmp_path / "ok.png", **kwargs})
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(UsageError, match="is a folder; name the PNG file to write inside it"):
        encoder.render_attention(image, tmp_path / "taken.png")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match=r"Cannot write the attention sheet .*file/sheet\.png \(.*\); choose a path"):
        encoder.render_attention(image, tmp_path / "file" / "sheet.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken.png"]


def test_cli_export_image_size(encoder_dir, tmp_path):
    """`vlmedge export --image-size HxW` reaches the source as image_size."""
    from vlmedge.artifact import Artifact
    from vlmedge.cli import main

    out = tmp_path / "swin"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(encoder_dir("swin")), "-o", str(out), "--image-size", "40x48"])
    assert exit_info.value.code in (0, None)
    manifest = Artifact.open(out).manifest
    assert manifest["embedding"]["image_size"] == [40, 48] and manifest["embedding"]["grid"] == [5, 6]
    assert manifest["preprocess"]["image"]["size"] == {"height": 40, "width": 48}
    assert manifest["graphs"]["model"]["inputs"][0]["shape"] == ["batch", 3, 40, 48]


@pytest.mark.parametrize("arch, model_type, what", [("ViTForImageClassification", "vit", "a classifier"),
                                                     ("CLIPModel", "clip", "a CLIP model")])
def test_image_size_is_refused_where_the_processor_fixes_the_resolution(arch, model_type, what, tmp_path):
    """Only image encoders and SigLIP2 (NaFlex) models take image_size=; a classifier or a CLIP
    model given one is refused in one sentence before anything is written."""
    import json

    import vlmedge
    from vlmedge.errors import UsageError

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [arch]}))
    with pytest.raises(UsageError, match=f"{what} is exported at its processor's resolution") as info:
        vlmedge.export(str(folder), tmp_path / "artifact", image_size="64x64")
    assert "\n" not in str(info.value) and not (tmp_path / "artifact").exists()


def test_image_size_parsing_and_preprocess_scaling():
    from vlmedge.errors import ExportError
    from vlmedge.exporters.sources.hf.encoder import preprocess_at
    from vlmedge.exporters.spec import parse_image_size
    from vlmedge.preprocess.image import ImagePreprocessSpec

    assert parse_image_size(None) is None
    assert parse_image_size(448) == parse_image_size("448") == (448, 448)
    assert parse_image_size("448x336") == parse_image_size((448, 336)) == (448, 336)
    assert parse_image_size("448,336") == (448, 336) and parse_image_size(4096) == (4096, 4096)
    for bad in ("big", 0, (1, 2, 3), "4x", True, "-5", 4097, "100000", (224, 100000)):
        with pytest.raises(ExportError):
            parse_image_size(bad)
    dinov2 = ImagePreprocessSpec(size={"shortest_edge": 256}, do_center_crop=True,
                                 crop_size={"height": 224, "width": 224}, resample="bicubic")
    moved = preprocess_at(dinov2, (448, 448))
    assert moved.size == {"shortest_edge": 512} and moved.crop_size == {"height": 448, "width": 448}
    assert preprocess_at(dinov2, (224, 224)) is dinov2
    vit = ImagePreprocessSpec(size={"height": 224, "width": 224})
    assert preprocess_at(vit, (336, 448)).size == {"height": 336, "width": 448}
    deit = ImagePreprocessSpec(size={"height": 256, "width": 256}, do_center_crop=True,
                               crop_size={"height": 224, "width": 224})
    assert preprocess_at(deit, (448, 448)).size == {"height": 512, "width": 512}

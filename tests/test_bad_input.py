"""Issue 2's bad-input list: each gives a VlmedgeError with a clear sentence."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import vlmedge
from vlmedge.errors import InputError, ModelNotFoundError, UnsupportedModelError, UsageError


@pytest.fixture(scope="module")
def classifier(vit_artifact):
    return vlmedge.load(vit_artifact)


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_missing_file(classifier, tmp_path):
    with pytest.raises(InputError, match="nope.jpg"):
        classifier.classify(str(tmp_path / "nope.jpg"))


def test_text_file_named_jpg(classifier, tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not an image")
    with pytest.raises(InputError, match="notes.jpg"):
        classifier.classify(fake)


def test_truncated_jpeg(classifier, tmp_path):
    path = tmp_path / "cut.jpg"
    data = _jpeg_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.jpg"):
        classifier.classify(path)


def test_decompression_bomb(classifier, tmp_path):
    from vlmedge.preprocess.image.decode import MAX_IMAGE_PIXELS

    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)  # 400 MP, small on disk
    with pytest.raises(InputError) as caught:
        classifier.classify(path)
    # one limit, vlmedge's (Pillow's own message named its twice as high one beside it)
    assert str(caught.value) == (f"Image file {path} is too large to decode safely (400,000,000 pixels; the limit is "
                                 f"{MAX_IMAGE_PIXELS:,} pixels); downscale it first.")


def test_the_pixel_limit_said_is_the_one_in_force(classifier, tmp_path, monkeypatch):
    """A program that lowered Pillow's limit was told of vlmedge's, 87,000 times higher."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "small.png"
    Image.new("RGB", (32, 32)).save(path)
    with pytest.raises(InputError) as caught:
        classifier.classify(path)
    assert str(caught.value) == (f"Image file {path} is too large to decode safely (1,024 pixels; the limit is 1,000 "
                                 "pixels); downscale it first.")


def test_a_text_or_audio_file_is_named_as_what_it_is(classifier, tmp_path):
    """They were told to convert themselves to PNG or JPEG."""
    (tmp_path / "captions.txt").write_text("a red circle\n")
    (tmp_path / "tone.wav").write_bytes(b"RIFF" + bytes(40))
    with pytest.raises(InputError, match=r"captions\.txt is a text file \(captions, .*\), not an image"):
        classifier.classify(tmp_path / "captions.txt")
    with pytest.raises(InputError, match=r"tone\.wav is an audio file, not an image; this model takes image files"):
        classifier.classify(tmp_path / "tone.wav")


def test_a_data_uri_or_a_long_string_is_not_echoed_whole_as_a_path(classifier):
    uri = "data:image/png;base64," + "A" * 200_000
    with pytest.raises(InputError, match=r"is a data: URI, not a path; pass its bytes") as caught:
        classifier.classify(uri)
    assert len(str(caught.value)) < 300
    with pytest.raises(InputError, match=r"\.\.\. \(5,000 characters\) does not exist") as caught:
        classifier.classify("x" * 5000)
    assert len(str(caught.value)) < 300


def test_empty_list(classifier):
    with pytest.raises(InputError, match="empty"):
        classifier.classify([])


@pytest.mark.parametrize("shape", [(32, 32, 5), (2, 32, 32, 3), (0, 10, 3)])
def test_wrong_shaped_array(classifier, shape):
    with pytest.raises(InputError):
        classifier.classify(np.zeros(shape, np.uint8))


def test_bad_top_k(classifier):
    with pytest.raises(UsageError, match="top_k"):  # an option, not an input
        classifier.classify(np.zeros((8, 8, 3), np.uint8), top_k=0)


def test_unsupported_architecture(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(UnsupportedModelError, match="BertForSequenceClassification"):
        vlmedge.export(str(tmp_path / "bert"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_model_id_not_in_offline_cache(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotFoundError, match="not .*cache|cache"):
        vlmedge.export("google/vit-base-patch16-224", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_folder_without_preprocessor_config(tmp_path, hf_classifier_dir):
    import shutil

    folder = tmp_path / "noproc"
    shutil.copytree(hf_classifier_dir("vit"), folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(UnsupportedModelError, match="preprocessor_config.json"):
        vlmedge.export(str(folder), tmp_path / "out")

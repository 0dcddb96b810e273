"""Issue 9's bad-input matrix: images, audio, text, arrays, manifests and model files.

Every case must raise a VlmedgeError whose message matches the case's pattern (one
specific sentence, not a generic failure), and must change no file outside the case's own
work folder: the rest of pytest's temporary tree (including the session's shared
artifact and the case's working directory) and the repository's data files are hashed
before and after.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import vlmedge
from vlmedge.artifact import sha256_file
from vlmedge.check import check_artifact
from vlmedge.errors import VlmedgeError
from tests.hardening_support import REPO, assert_unchanged, tree_state, write_tokenizer

SAMPLES = REPO / "exporters" / "sample_data"


@dataclass
class Ctx:
    """What a case gets: its own work folder and the shared, read-only fixtures."""

    work: Path
    vit_artifact: Path
    classifier: Any
    hf_vit: Path
    tokenizer_folder: Path

    def artifact(self) -> Path:
        """A fresh copy of the tiny ViT artifact inside the work folder."""
        target = self.work / "artifact"
        shutil.copytree(self.vit_artifact, target)
        return target

    def hf_folder(self) -> Path:
        """A fresh copy of the tiny ViT's save_pretrained folder inside the work folder."""
        target = self.work / "hf"
        shutil.copytree(self.hf_vit, target)
        return target

    def file(self, name: str, data: bytes) -> Path:
        path = self.work / name
        path.write_bytes(data)
        return path


CASES: list[tuple[str, Callable[[Ctx], Any], str]] = []


def case(name: str, pattern: str):
    def register(fn: Callable[[Ctx], Any]):
        CASES.append((name, fn, pattern))
        return fn
    return register


# -- images -------------------------------------------------------------------------------------

def _encoded(fmt: str, size=(40, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    array = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, with almost no data (a few hundred bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


case("image-missing-file", r"nope\.jpg does not exist")(lambda c: c.classifier.classify(str(c.work / "nope.jpg")))
case("image-directory", r"is a directory, not an image file")(lambda c: c.classifier.classify(str(c.work)))
case("image-text-named-jpg", r"notes\.jpg is not a readable JPEG, PNG")(
    lambda c: c.classifier.classify(c.file("notes.jpg", b"this is not an image\n" * 10)))
case("image-truncated-jpeg", r"cut\.jpg (could not be decoded|is not a readable).*(truncated|corrupt|JPEG)")(
    lambda c: c.classifier.classify(c.file("cut.jpg", _encoded("JPEG")[:300])))
case("image-truncated-png", r"cut\.png (could not be decoded|is not a readable)")(
    lambda c: c.classifier.classify(c.file("cut.png", _encoded("PNG")[:200])))
case("image-zero-bytes", r"empty\.png is empty \(0 bytes\); pass a complete image file")(
    lambda c: c.classifier.classify(c.file("empty.png", b"")))


def _link_loop(c: Ctx):
    (c.work / "a.png").symlink_to("b.png")
    (c.work / "b.png").symlink_to("a.png")
    return c.classifier.classify(str(c.work / "a.png"))


case("image-link-loop", r"a\.png is a link into a loop of links \(b\.png \.\.\.\)")(_link_loop)
case("image-decompression-bomb", r"bomb\.png is too large to decode safely .*downscale it")(
    lambda c: c.classifier.classify(c.file("bomb.png", _png_bomb(30000, 30000))))
case("image-format-not-allowed-tga", r"image\.tga is not a readable JPEG, PNG, BMP, GIF, TIFF, WEBP, PPM image")(
    lambda c: c.classifier.classify(c.file("image.tga", _encoded("TGA"))))
case("image-format-not-allowed-ico", r"icon\.ico is not a readable JPEG")(
    lambda c: c.classifier.classify(c.file("icon.ico", _encoded("ICO", (32, 32)))))
case("image-url", r"is a URL; vlmedge does not download")(lambda c: c.classifier.classify("https://example.com/cat.jpg"))
case("image-standard-input-dash", r"^'-' \(standard input\) is not read; pass the image files' paths")(
    lambda c: c.classifier.classify("-"))
case("image-bytes-among-many", r"^Image 2 of the list: The image given as bytes is not a readable JPEG")(
    lambda c: c.classifier.classify([np.zeros((8, 8, 3), np.uint8)] * 2 + [b"junk"] + [np.zeros((8, 8, 3), np.uint8)]))
case("image-float-array", r"dtype uint8 .*not float32")(lambda c: c.classifier.classify(np.zeros((8, 8, 3), np.float32)))
case("image-five-channels", r"must have shape .*not \(8, 8, 5\)")(lambda c: c.classifier.classify(np.zeros((8, 8, 5), np.uint8)))
case("image-empty-array", r"image array is empty")(lambda c: c.classifier.classify(np.zeros((0, 10, 3), np.uint8)))
case("image-empty-pil", r"^The PIL image is empty \(size \(0, 10\)\); pass an image of at least 1x1 pixel\.$")(
    lambda c: c.classifier.classify(Image.new("RGB", (0, 10))))
case("image-empty-pil-among-many", r"^Image 1 of the list: The PIL image is empty \(size \(10, 0\)\)")(
    lambda c: c.classifier.classify([Image.new("RGB", (8, 8)), Image.new("L", (10, 0))]))
case("image-4d-array", r"array of shape \[2, 8, 8, 3\]; pass one HWC image")(
    lambda c: c.classifier.classify(np.zeros((2, 8, 8, 3), np.uint8)))
case("image-garbage-bytes", r"image given as bytes is not a readable")(lambda c: c.classifier.classify(b"\x00\x01garbage" * 50))
case("image-empty-bytes", r"image given as bytes is not a readable")(lambda c: c.classifier.classify(b""))
case("image-unsupported-type", r"Unsupported input type dict")(lambda c: c.classifier.classify({"path": "x.jpg"}))
case("image-empty-list", r"empty list; pass at least one")(lambda c: c.classifier.classify([]))
case("image-bad-top-k", r"top_k must be a positive integer")(lambda c: c.classifier.classify(np.zeros((8, 8, 3), np.uint8), top_k=0))
case("image-gif-header-only", r"bad\.gif (could not be decoded|is not a readable)")(
    lambda c: c.classifier.classify(c.file("bad.gif", b"GIF89a\x10\x00\x10\x00\x80\x00\x00")))
case("image-tiff-bad-ifd", r"bad\.tif (could not be decoded|is not a readable)")(
    lambda c: c.classifier.classify(c.file("bad.tif", b"II*\x00\xff\xff\xff\x7f" + b"\x00" * 32)))
case("image-one-bad-in-a-list", r"gone\.png does not exist")(
    lambda c: c.classifier.classify([np.zeros((8, 8, 3), np.uint8), str(c.work / "gone.png")]))


# -- audio --------------------------------------------------------------------------------------

def _wav(rate=16000, seconds=0.1, channels=1, subtype="PCM_16") -> bytes:
    buffer = io.BytesIO()
    frames = int(rate * seconds)
    sf.write(buffer, np.zeros((frames, channels), np.float32), rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def _load_audio(*args, **kwargs):
    from vlmedge.preprocess.audio import load_audio

    return load_audio(*args, **kwargs)


case("audio-missing-file", r"Audio file .*nope\.wav does not exist")(lambda c: _load_audio(c.work / "nope.wav"))
case("audio-url", r"^https://example\.com/a\.wav is a URL; vlmedge does not download audio files")(
    lambda c: _load_audio("https://example.com/a.wav"))
case("audio-standard-input-dash", r"^'-' \(standard input\) is not read; pass the audio files' paths")(
    lambda c: _load_audio("-"))
case("audio-empty-file", r"empty\.wav is empty \(0 bytes\)")(lambda c: _load_audio(c.file("empty.wav", b"")))
case("audio-garbage-bytes", r"Cannot decode the audio bytes \((?!.*BytesIO)[^)]*\); pass a WAV, FLAC, OGG, MP3 or AIFF file")(
    lambda c: _load_audio(b"RIFFgarbage" * 20))
case("audio-truncated-header", r"Cannot decode audio file .*cut\.wav")(lambda c: _load_audio(c.file("cut.wav", _wav()[:20])))
case("audio-text-named-wav", r"Cannot decode audio file .*notes\.wav")(lambda c: _load_audio(c.file("notes.wav", b"hello\n" * 40)))
case("audio-rate-too-low", r"500 Hz, is outside the 1000\.\.192000 Hz vlmedge reads; resample the file")(
    lambda c: _load_audio(c.file("slow.wav", _wav(rate=500))))
case("audio-nan-array", r"NaN or infinite samples")(lambda c: _load_audio(np.full(1600, np.nan, np.float32), 16000))
case("audio-beyond-float32", r"samples beyond float32's range \(up to 1e\+39\); audio samples belong in \[-1, 1\]")(
    lambda c: _load_audio(np.array([1e39] + [0.0] * 1599), 16000))
case("audio-array-without-rate", r"needs its sample rate")(lambda c: _load_audio(np.zeros(1600, np.float32)))
case("audio-3d-array", r"1-D or 2-D .*not 3-D")(lambda c: _load_audio(np.zeros((2, 2, 400), np.float32), 16000))
case("audio-object-array", r"integer or float samples, not object")(lambda c: _load_audio(np.array([None] * 8), 16000))
case("audio-too-many-channels", r"reads as one clip of 100 channels, which would be averaged into one: too many channels for an array, most likely a batch of clips; pass a list")(lambda c: _load_audio(np.zeros((100, 1000), np.float32), 16000))
case("audio-bad-rate-type", r"'16k' is not an integer number of Hz")(lambda c: _load_audio(np.zeros(1600, np.float32), "16k"))


# -- text ---------------------------------------------------------------------------------------

def _tokenizer(c: Ctx):
    from vlmedge.preprocess.text import TextPreprocessSpec, TextTokenizer

    spec = json.loads((c.tokenizer_folder / "spec.json").read_text())
    return TextTokenizer(c.tokenizer_folder / "tokenizer.json", TextPreprocessSpec.from_dict(spec))


case("text-bytes", r"Captions must be str, not bytes")(lambda c: _tokenizer(c).encode(b"a cat"))
case("text-none", r"not NoneType")(lambda c: _tokenizer(c).encode(None))
case("text-empty-list", r"list of captions is empty")(lambda c: _tokenizer(c).encode([]))
case("text-non-string-item", r"Caption 1 is a int, not a str")(lambda c: _tokenizer(c).encode(["a cat", 7]))
case("text-spec-wrong-type", r"'context_length' is '77', not an int")(
    lambda c: __import__("vlmedge.preprocess.text", fromlist=["x"]).TextPreprocessSpec.from_dict({"context_length": "77"}))


def _corrupt_tokenizer(c: Ctx):
    from vlmedge.preprocess.text import TextPreprocessSpec, TextTokenizer

    path = c.file("tokenizer.json", b'{"version": "1.0", "model": {"type": "BPE", "vocab": 3}}')
    return TextTokenizer(path, TextPreprocessSpec())


case("text-corrupt-tokenizer-file", r"tokenizer\.json is not a tokenizers file that tokenizers \d[\w.]* reads .*; re-export the artifact, or upgrade tokenizers")(_corrupt_tokenizer)


# -- arrays handed to Session.run ---------------------------------------------------------------

def _session(c: Ctx):
    (session,) = c.classifier.model.sessions.values()
    return session


def _pixels(dtype=np.float32, shape=(1, 3, 32, 32), fill=0.0):
    return np.full(shape, fill, dtype=dtype)


case("array-wrong-dtype", r"'pixel_values' must have dtype float32, but it has float64")(
    lambda c: _session(c).run({"pixel_values": _pixels(np.float64)}))
case("array-uint8-image", r"'pixel_values' must have dtype float32, but it has uint8")(
    lambda c: _session(c).run({"pixel_values": _pixels(np.uint8)}))
case("array-wrong-rank", r"'pixel_values' must have 4 dimensions .* shape \[3, 32, 32\]")(
    lambda c: _session(c).run({"pixel_values": _pixels(shape=(3, 32, 32))}))
case("array-wrong-channels", r"'pixel_values' must have size 3 on axis 1 .* shape \[1, 4, 32, 32\]")(
    lambda c: _session(c).run({"pixel_values": _pixels(shape=(1, 4, 32, 32))}))
case("array-wrong-height", r"'pixel_values' must have size 32 on axis 2 .* shape \[1, 3, 31, 32\]")(
    lambda c: _session(c).run({"pixel_values": _pixels(shape=(1, 3, 31, 32))}))
case("array-nan", r"'pixel_values' contains NaN or infinite values")(
    lambda c: _session(c).run({"pixel_values": _pixels(fill=np.nan)}))
case("array-inf", r"'pixel_values' contains NaN or infinite values")(
    lambda c: _session(c).run({"pixel_values": _pixels(fill=np.inf)}))
case("array-missing-input", r"takes inputs \['pixel_values'\] but got \[\] \(missing \['pixel_values'\]\)")(
    lambda c: _session(c).run({}))
case("array-unknown-input", r"\(unknown \['mask'\]\)")(
    lambda c: _session(c).run({"pixel_values": _pixels(), "mask": _pixels()}))
case("array-not-ndarray", r"'pixel_values' must be a numpy array, not list")(
    lambda c: _session(c).run({"pixel_values": _pixels().tolist()}))
case("array-feeds-not-dict", r"takes a dict of input name -> numpy array, not list")(
    lambda c: _session(c).run([_pixels()]))


def _batch_range(c: Ctx):
    session = _session(c)
    session.batch_range = (1, 4)
    try:
        session.run({"pixel_values": _pixels(shape=(5, 3, 32, 32))})
    finally:
        del session.batch_range


case("array-batch-out-of-range", r"'pixel_values' has batch size 5, but this model accepts 1 to 4")(_batch_range)


# -- manifests and artifact files ---------------------------------------------------------------

def _edit(root: Path, change: Callable[[dict], Any]) -> Path:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return root


def _model(m: dict) -> dict:
    return next(e for e in m["files"] if e["role"] == "model")


def _rehash(root: Path, relpath: str) -> None:
    """Updates the manifest's size and sha256 of a file, as a thorough tamperer would."""
    path = root / relpath
    _edit(root, lambda m: next(e for e in m["files"] if e["path"] == relpath).update(
        sha256=sha256_file(path), size=path.stat().st_size))


def _load(root: Path):
    return vlmedge.load(root)


def _manifest_case(name: str, pattern: str, change: Callable[[dict], Any]):
    case(name, pattern)(lambda c: _load(_edit(c.artifact(), change)))


_manifest_case("manifest-schema-2", r"schema version 2, but this vlmedge reads version 1", lambda m: m.update(schema_version=2))
_manifest_case("manifest-labels-a-string", r"labels must be a list of strings or null", lambda m: m.update(labels="cat,dog"))
_manifest_case("manifest-labels-numbers", r"labels must be a list of strings or null", lambda m: m.update(labels=list(range(12))))
_manifest_case("manifest-labels-too-few", r"names 11 labels for a model that scores 12 classes", lambda m: m["labels"].pop())
case("manifest-labels-too-few-checked", r"names 11 labels for a model that scores 12 classes")(  # info, check, bench
    lambda c: check_artifact(_edit(c.artifact(), lambda m: m["labels"].pop())))
_manifest_case("manifest-task-without-its-section", r"image-embedding task needs an 'embedding' section with "
               r"default_pooling", lambda m: m.update(task="image-embedding"))
_manifest_case("manifest-image-spec-no-size", r"image preprocessing spec is malformed",
               lambda m: m["preprocess"]["image"].pop("size"))
_manifest_case("manifest-image-spec-bad-mean", r"image preprocessing spec is invalid: image_mean must be three numbers",
               lambda m: m["preprocess"]["image"].update(image_mean=[0.5]))
_manifest_case("manifest-image-size-the-model-does-not-take", r"preprocesses images to 48x48, but its model takes "
               r"\d+x\d+; its manifest was edited", lambda m: m["preprocess"]["image"].update(
                   size={"height": 48, "width": 48}, do_center_crop=False, crop_size=None))
_manifest_case("manifest-preprocess-a-list", r"preprocess\['image'\] is a list, not an object",
               lambda m: m["preprocess"].update(image=[1, 2]))
_manifest_case("manifest-preprocess-missing-image", r"image-classification task needs preprocess \['image'\]",
               lambda m: m.update(preprocess={}))
_manifest_case("manifest-graphs-missing", r"lacks a valid 'graphs' field", lambda m: m.pop("graphs"))
_manifest_case("manifest-graphs-empty", r"it lists no graphs", lambda m: m.update(graphs={}))
_manifest_case("manifest-labels-missing", r"has 0 labels but its model scores 12 classes", lambda m: m.pop("labels"))
_manifest_case("manifest-unknown-activation", r"asks for the activation 'relu'; this vlmedge knows softmax, sigmoid, none",
               lambda m: m["postprocess"].update(activation="relu"))
_manifest_case("manifest-second-graph", r"the image-classification task has 1 graph\(s\), not 2",
               lambda m: (m["graphs"].update(extra=m["graphs"]["model"]),
                          m["files"].append({**_model(m), "graph": "extra", "path": "onnx/extra.onnx"})))
_manifest_case("manifest-graph-outputs-renamed", r"has outputs \['scores'\], but onnx/model\.fp32\.onnx has \['logits'\]",
               lambda m: m["graphs"]["model"]["outputs"][0].update(name="scores"))
_manifest_case("manifest-graph-inputs-not-list", r"graph 'model' has no list of inputs",
               lambda m: m["graphs"]["model"].update(inputs={"pixel_values": 1}))
_manifest_case("manifest-absolute-path", r"names the path '/etc/passwd', which leaves the artifact folder",
               lambda m: _model(m).update(path="/etc/passwd"))
_manifest_case("manifest-dotdot-path", r"'onnx/\.\./\.\./outside\.onnx', which leaves the artifact folder",
               lambda m: _model(m).update(path="onnx/../../outside.onnx"))
_manifest_case("manifest-one-output-softmaxed", r"scores its one output with a softmax, which is 1\.0 for every image .*"
               r"re-export the artifact", lambda m: (m.update(labels=["only"]),  # as vlmedge wrote one-output heads
                                                      m["graphs"]["model"]["outputs"][0].update(shape=["batch", 1])))
_manifest_case("manifest-one-output-no-activation", r"scores its one output with a softmax",  # softmax by default
               lambda m: (m.update(labels=["only"], postprocess=None),
                          m["graphs"]["model"]["outputs"][0].update(shape=["batch", 1])))
_manifest_case("manifest-format-revision-of-a-newer-vlmedge", r"format revision 4, written by a newer vlmedge than this "
               r"one \(which reads up to 3\); upgrade vlmedge", lambda m: m.update(format_revision=4))
_manifest_case("manifest-format-revision-as-text", r"has a format_revision of '2', not a whole number from 1",
               lambda m: m.update(format_revision="2"))
_manifest_case("manifest-session-option-precision", r"session option precision='int8'.*may not set",  # no backend takes it
               lambda m: _model(m).update(session_options={"precision": "int8"}))
_manifest_case("manifest-session-option-cache-dir", r"session option cache_dir='/tmp/x'.*may not set",
               lambda m: _model(m).update(session_options={"cache_dir": "/tmp/x"}))
_manifest_case("manifest-model-without-target", r"model file 'onnx/model\.fp32\.onnx' lacks its graph, target or precision",
               lambda m: _model(m).pop("target"))
_manifest_case("manifest-parity-a-string", r"the parity report of 'onnx/model\.fp32\.onnx' is not an object",
               lambda m: _model(m).update(parity="passed"))
_manifest_case("manifest-parity-gate-unknown-key", r"the parity report of 'onnx/model\.fp32\.onnx' has an invalid gate",
               lambda m: _model(m)["parity"]["gate"].update(exec="os.system('x')"))
_manifest_case("manifest-parity-no-outputs", r"the parity report of 'onnx/model\.fp32\.onnx' has an invalid outputs",
               lambda m: _model(m)["parity"].update(outputs={}))
_manifest_case("manifest-source-a-list", r"source must be an object", lambda m: m.update(source=["hf"]))
_manifest_case("manifest-unknown-target", r"holds no model files this vlmedge can run \(targets: antigravity\)",
               lambda m: _model(m).update(target="antigravity"))
_manifest_case("manifest-size-a-string", r"file entry 'onnx/model\.fp32\.onnx' needs .* integer size",
               lambda m: _model(m).update(size="big"))
_manifest_case("manifest-duplicate-entry", r"lists 'onnx/model\.fp32\.onnx' twice", lambda m: m["files"].append(dict(_model(m))))
_manifest_case("manifest-unknown-task", r"has task 'segmentation', which this vlmedge cannot run",
               lambda m: m.update(task="segmentation"))
_manifest_case("manifest-no-schema-version", r"has a schema_version of None, not a whole number; the artifact is "
               r"corrupt", lambda m: m.pop("schema_version"))
_manifest_case("manifest-schema-as-text", r"has a schema_version of '1', not a whole number",
               lambda m: m.update(schema_version="1"))
case("manifest-top-level-list", r"is not a manifest object")(
    lambda c: _load((lambda r: ((r / "manifest.json").write_text("[1, 2]"), r)[1])(c.artifact())))
case("manifest-invalid-json", r"manifest\.json is not valid JSON")(
    lambda c: _load((lambda r: ((r / "manifest.json").write_text("{oops"), r)[1])(c.artifact())))
case("manifest-deeply-nested", r"nested too deeply")(
    lambda c: _load((lambda r: ((r / "manifest.json").write_text("[" * 200_000 + "]" * 200_000), r)[1])(c.artifact())))
case("manifest-missing", r"has no manifest\.json; it is not a vlmedge artifact")(
    lambda c: _load((lambda r: ((r / "manifest.json").unlink(), r)[1])(c.artifact())))
case("manifest-a-folder", r"manifest\.json is not a regular file; the artifact is corrupt")(
    lambda c: _load((lambda r: ((r / "manifest.json").unlink(), (r / "manifest.json").mkdir(), r)[2])(c.artifact())))
case("manifest-a-fifo", r"manifest\.json is not a regular file; the artifact is corrupt")(
    lambda c: _load((lambda r: ((r / "manifest.json").unlink(), os.mkfifo(r / "manifest.json"), r)[2])(c.artifact())))
case("artifact-not-a-folder", r"No artifact folder at")(lambda c: _load(c.work / "nothing-here"))

# -- vlmedge.load's own arguments -----------------------------------------------------------------

case("load-path-not-a-path", r"An artifact is a folder path \(a str or os\.PathLike\), not int")(
    lambda c: vlmedge.load(5))
case("check-path-not-a-path", r"An artifact is a folder path \(a str or os\.PathLike\), not NoneType")(
    lambda c: __import__("vlmedge.check", fromlist=["check_artifact"]).check_artifact(None))
case("load-device-none", r"device must be a name such as 'cpu', 'cuda' or 'GPU', not None")(
    lambda c: vlmedge.load(c.vit_artifact, device=None))
case("load-cache-a-string", r"cache must be True, False or None .*not 'no'")(
    lambda c: vlmedge.load(c.vit_artifact, cache="no"))
case("load-unknown-precision", r"Unknown precision 'int4'; choose one of fp32, fp16, bf16, int8, or None")(
    lambda c: vlmedge.load(c.vit_artifact, precision="int4"))
case("load-option-of-another-backend",
     r"onnxruntime backend takes no session option 'performance_hint' \(an option of openvino\)")(
    lambda c: vlmedge.load(c.vit_artifact, backend="onnxruntime", performance_hint="throughput"))
case("load-unknown-option", r"vlmedge.load takes no keyword 'intra_op_threads'; .* session options: threads, optimization")(
    lambda c: vlmedge.load(c.vit_artifact, backend="onnxruntime", intra_op_threads=2))
case("export-out-none", r"out must be the artifact folder to write \(a str or os\.PathLike\), not NoneType")(
    lambda c: vlmedge.export(str(c.hf_vit), None))
case("export-calibration-size-zero", r"calibration_size must be a positive integer, not 0")(
    lambda c: vlmedge.export(str(c.hf_vit), c.work / "out", precision=["int8"], calibration_size=0))
case("export-strict-a-string", r"strict must be True or False, not 'no'")(
    lambda c: vlmedge.export(str(c.hf_vit), c.work / "out", strict="no"))
case("load-threads-zero", r"threads must be a whole number of at least 1, not 0")(
    lambda c: vlmedge.load(c.vit_artifact, backend="onnxruntime", threads=0))


def _symlinked_manifest(c: Ctx):
    root = c.artifact()
    real = c.work / "manifest-elsewhere.json"
    shutil.move(root / "manifest.json", real)
    os.symlink(real, root / "manifest.json")
    return _load(root)


case("manifest-symlink", r"manifest\.json is a symbolic link")(_symlinked_manifest)


def _symlinked_model(c: Ctx):
    root = c.artifact()
    outside = c.work / "elsewhere.onnx"
    shutil.move(root / "onnx" / "model.fp32.onnx", outside)
    os.symlink(outside, root / "onnx" / "model.fp32.onnx")
    return _load(root)


def _symlinked_folder(c: Ctx):
    root = c.artifact()
    outside = c.work / "onnx-elsewhere"
    shutil.move(root / "onnx", outside)
    os.symlink(outside, root / "onnx", target_is_directory=True)
    return _load(root)


def _hard_link(c: Ctx):
    root = c.artifact()
    os.link(root / "onnx" / "model.fp32.onnx", c.work / "second-name.onnx")
    return _load(root)


def _extra_file(c: Ctx):
    root = c.artifact()
    (root / "onnx" / "extra.onnx").write_bytes(b"not listed")
    return _load(root)


def _missing_file(c: Ctx):
    root = c.artifact()
    (root / "onnx" / "model.fp32.onnx").unlink()
    return _load(root)


def _fifo_instead_of_file(c: Ctx):
    root = c.artifact()
    (root / "onnx" / "model.fp32.onnx").unlink()
    os.mkfifo(root / "onnx" / "model.fp32.onnx")  # reading it would block forever
    return _load(root)


def _altered_file(c: Ctx):
    root = c.artifact()
    path = root / "onnx" / "model.fp32.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x40
    path.write_bytes(bytes(data))
    return _load(root)


def _truncated_file(c: Ctx):
    root = c.artifact()
    path = root / "samples" / "parity.npz"
    path.write_bytes(path.read_bytes()[:-10])
    return _load(root)


def _renamed_file(c: Ctx):
    root = c.artifact()
    os.rename(root / "onnx" / "model.fp32.onnx", root / "onnx" / "model.onnx")
    return _load(root)


def _garbage_model_rehashed(c: Ctx):
    root = c.artifact()
    (root / "onnx" / "model.fp32.onnx").write_bytes(b"\x08\x07garbage" * 100)
    _rehash(root, "onnx/model.fp32.onnx")
    return _load(root)


def _unknown_operator_rehashed(c: Ctx):
    from onnx import TensorProto, helper

    root = c.artifact()
    graph = helper.make_graph([helper.make_node("NoSuchOperator", ["pixel_values"], ["logits"], domain="evil.ops")], "g",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 12])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("evil.ops", 1)])
    (root / "onnx" / "model.fp32.onnx").write_bytes(model.SerializeToString())
    _rehash(root, "onnx/model.fp32.onnx")
    return _load(root)


def _external_data_escape(c: Ctx, relpath: str = "onnx/model.fp32.onnx"):
    from onnx import TensorProto, helper

    root = c.artifact()
    if relpath != "onnx/model.fp32.onnx":
        os.rename(root / "onnx" / "model.fp32.onnx", root / relpath)
        _edit(root, lambda m: _model(m).update(path=relpath))
    (c.work / "secret.bin").write_bytes(b"\x00" * 8)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    weight.data_location = TensorProto.EXTERNAL
    del weight.float_data[:]
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../secret.bin"
    graph = helper.make_graph([helper.make_node("Add", ["pixel_values", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
                              initializer=[weight])
    (root / relpath).write_bytes(helper.make_model(graph).SerializeToString())
    _rehash(root, relpath)
    return _load(root)


case("artifact-symlinked-model-file", r"onnx/model\.fp32\.onnx is a symbolic link")(_symlinked_model)
case("artifact-symlinked-parent-folder", r"onnx/model\.fp32\.onnx is a symbolic link")(_symlinked_folder)
case("artifact-hard-linked-file", r"onnx/model\.fp32\.onnx in .* is hard-linked elsewhere")(_hard_link)
case("artifact-extra-file", r"holds onnx/extra\.onnx, which its manifest does not list")(_extra_file)
case("artifact-missing-file", r"is missing onnx/model\.fp32\.onnx")(_missing_file)
case("artifact-fifo-instead-of-file", r"onnx/model\.fp32\.onnx in .* is not a regular file")(_fifo_instead_of_file)
case("artifact-altered-file", r"onnx/model\.fp32\.onnx in .* does not match the sha256")(_altered_file)
case("artifact-truncated-file", r"samples/parity\.npz in .* does not match the sha256")(_truncated_file)
case("artifact-renamed-file", r"holds onnx/model\.onnx, which its manifest does not list")(_renamed_file)
case("artifact-garbage-model-rehashed", r"model\.fp32\.onnx is not a valid ONNX file")(_garbage_model_rehashed)
case("artifact-unknown-operator-rehashed", r"ONNX Runtime cannot load model\.fp32\.onnx: .*Re-export it")(
    _unknown_operator_rehashed)
def _external_data_escape_without_suffix(c: Ctx):
    """The same model under a name without .onnx: ONNX Runtime parses it all the same."""
    try:
        _external_data_escape(c, relpath="onnx/model")
    finally:
        assert not (c.work / "artifact" / "onnx" / "model.fp32.onnx").exists()


case("artifact-external-data-escapes-no-suffix", r"external data at '\.\./\.\./secret\.bin', outside its artifact")(
    _external_data_escape_without_suffix)
case("artifact-external-data-escapes", r"external data at '\.\./\.\./secret\.bin', outside its artifact folder")(
    _external_data_escape)


def _recursive_function_rehashed(c: Ctx):
    """A model-local function that calls itself: counting its inlined nodes must not loop."""
    from onnx import TensorProto, helper

    root = c.artifact()
    call = helper.make_node("Again", ["pixel_values"], ["logits"], domain="local.loop")
    again = helper.make_function("local.loop", "Again", ["x"], ["y"], [helper.make_node("Again", ["x"], ["y"], domain="local.loop")],
                                 [helper.make_opsetid("", 18), helper.make_opsetid("local.loop", 1)])
    graph = helper.make_graph([call], "g", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 12])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 12])])
    model = helper.make_model(graph, functions=[again], opset_imports=[helper.make_opsetid("", 18),
                                                                       helper.make_opsetid("local.loop", 1)])
    (root / "onnx" / "model.fp32.onnx").write_bytes(model.SerializeToString())
    _rehash(root, "onnx/model.fp32.onnx")
    return _load(root)


case("artifact-recursive-function-rehashed", r"model\.fp32\.onnx has a function that calls itself, directly or through "
     r"others \(local\.loop\.Again\); refusing to load it\.")(_recursive_function_rehashed)


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """An .npy member that declares `shape` and holds no data: numpy allocates what the header
    declares before it reads any, so this is all a bomb needs."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _zeros_npy(size: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(size, np.float32))
    return buffer.getvalue()


def _parity_of(members: dict[str, bytes]):
    """check_artifact on the tiny ViT with samples/parity.npz holding these members instead
    (deflated, as np.savez_compressed writes), rehashed."""
    def run(c: Ctx):
        root = c.artifact()
        with zipfile.ZipFile(root / "samples" / "parity.npz", "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        _rehash(root, "samples/parity.npz")
        return check_artifact(root)
    return run


case("artifact-parity-header-claims-4-tib", r"samples/parity\.npz in .* declares 4,194,304 MiB of arrays where parity "
     r"samples need 1024 MiB at most; re-export the artifact\.")(
    _parity_of({"model.input.pixel_values.npy": _npy_header((2**40,))}))
case("artifact-parity-arrays-declare-too-much-together", r"declares 1,200 MiB of arrays where parity samples need 1024 MiB")(
    _parity_of({f"model.input.x{i}.npy": _npy_header((100 * 2**20,)) for i in range(3)}))
# a negative dimension would take its size off the total the other members declare
case("artifact-parity-negative-shape", r"samples/parity\.npz in .* cannot be read \(an array of negative shape "
     r"\[-1, 1099511627776\]\); re-export the artifact\.")(
    _parity_of({"model.input.pixel_values.npy": _npy_header((-1, 2**40)),
                "model.input.x.npy": _npy_header((2**40,))}))
case("artifact-parity-python-objects", r"samples/parity\.npz in .* holds Python objects in 'model\.input\.pixel_values\.npy', "
     r"which vlmedge never unpickles; re-export the artifact\.")(
    _parity_of({"model.input.pixel_values.npy": _npy_header((2,), "|O") + b"\x80\x04N."}))
case("artifact-parity-too-many-arrays", r"samples/parity\.npz in .* holds 1,000 arrays where parity samples need 64 at "
     r"most; re-export the artifact\.$")(  # one sentence, not a list of every name
    _parity_of({f"model.input.x{i}.npy": _zeros_npy(1) for i in range(1000)}))
case("artifact-parity-member-not-npy", r"samples/parity\.npz in .* cannot be read \(the magic string is not correct")(
    _parity_of({"model.input.pixel_values.npy": b"\x00" * 4096}))


# -- model files handed to export ---------------------------------------------------------------

class _WritesMarker:
    """Unpickling this calls open(path, "w"): a file appears if a loader runs pickled code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickle_payload_folder(c: Ctx, marker: Path) -> Path:
    """The tiny ViT's folder with its safetensors replaced by a pytorch_model.bin whose
    unpickling would create `marker`."""
    import torch

    folder = c.hf_folder()
    (folder / "model.safetensors").unlink()
    torch.save({"vit.embeddings.cls_token": _WritesMarker(marker)}, folder / "pytorch_model.bin")
    return folder


def _pickle_payload(c: Ctx):
    marker = c.work / "MARKER"
    try:
        vlmedge.export(str(pickle_payload_folder(c, marker)), c.work / "out")
    finally:
        assert not marker.exists(), "the pickle payload ran: the marker file was written"
        assert not (c.work / "out").exists()


def _export(c: Ctx, folder: Path):
    try:
        return vlmedge.export(str(folder), c.work / "out")
    finally:
        assert not (c.work / "out").exists()


def _config_not_json(c: Ctx):
    folder = c.hf_folder()
    (folder / "config.json").write_text("{not json")
    return _export(c, folder)


def _corrupt_safetensors(c: Ctx):
    folder = c.hf_folder()
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    return _export(c, folder)


def _no_weights(c: Ctx):
    folder = c.hf_folder()
    (folder / "model.safetensors").unlink()
    return _export(c, folder)


def _weights_renamed(c: Ctx, rename: Callable[[str], str | None]) -> Path:
    """The tiny ViT's folder with its weights' names changed (None: left out)."""
    from safetensors.numpy import load_file, save_file

    folder = c.hf_folder()
    weights = load_file(folder / "model.safetensors")
    save_file({rename(k): v for k, v in weights.items() if rename(k) is not None}, folder / "model.safetensors",
              metadata={"format": "pt"})
    return folder


def _weights_without_the_head(c: Ctx):
    return _export(c, _weights_renamed(c, lambda key: None if key.startswith("classifier.") else key))


def _weights_of_a_wrapper(c: Ctx):
    return _export(c, _weights_renamed(c, lambda key: "module." + key))


def _peft_adapter_beside_the_model(c: Ctx):
    folder = c.hf_folder()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["query"]}))
    return _export(c, folder)


def _an_artifact_as_the_source(c: Ctx):
    return _export(c, c.vit_artifact)


def _a_training_run(c: Ctx):
    run = c.work / "run"
    run.mkdir()
    shutil.copytree(c.hf_vit, run / "checkpoint-500")
    return _export(c, run)


def _unknown_architecture(c: Ctx):
    folder = c.hf_folder()
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["EvilRemoteModel"]
    config["auto_map"] = {"AutoModel": "evil.EvilRemoteModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(c.work / 'REMOTE-CODE-RAN')!r}, 'w')\n")
    try:
        return _export(c, folder)
    finally:
        assert not (c.work / "REMOTE-CODE-RAN").exists()


def _architecture_not_a_model_class(c: Ctx):
    folder = c.hf_folder()
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["pipeline"]  # an attribute of transformers, but no model class
    (folder / "config.json").write_text(json.dumps(config))
    try:
        return vlmedge.export(str(folder), c.work / "out", task="image-classification")
    finally:
        assert not (c.work / "out").exists()


def _a_weights_file_with_labels(c: Ctx):
    """--labels (timm's) with a file: the file is the cause to name, not the option."""
    weights = c.file("model.pt", b"not a module")
    try:
        return vlmedge.export(str(weights), c.work / "out", labels=["cat", "dog"])
    finally:
        assert not (c.work / "out").exists()


def _no_config(c: Ctx):
    folder = c.hf_folder()
    (folder / "config.json").unlink()
    return _export(c, folder)


def _bad_processor(c: Ctx):
    folder = c.hf_folder()
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "MysteryImageProcessor"}))
    return _export(c, folder)


def _export_over(c: Ctx, name: str, files: dict[str, str]) -> None:
    """An export to a folder holding these files, which must be left as they were."""
    out = c.work / name
    out.mkdir()
    for file, text in files.items():
        (out / file).write_text(text)
    from vlmedge.artifact import ArtifactWriter

    try:
        ArtifactWriter(out)
    finally:
        assert {file: (out / file).read_text() for file in files} == files


def _output_not_an_artifact(c: Ctx):
    _export_over(c, "precious", {"thesis.txt": "do not delete"})


case("model-pickle-payload-bin", r"weights in .* are a pickle that would run code .*\(it calls (io|builtins)\.open\).*never unpickles")(
    _pickle_payload)
case("model-config-not-json", r"Cannot read the model config in")(_config_not_json)
case("model-corrupt-safetensors", r"(safetensors weights in .* are corrupt or truncated|Cannot load the weights in)")(
    _corrupt_safetensors)
case("model-no-weights", r"Cannot load the weights in .*hf")(_no_weights)
case("model-remote-code-architecture", r"(EvilRemoteModel|trust_remote_code|custom code)")(_unknown_architecture)
case("model-architecture-not-a-model-class", r"Architecture pipeline is not in this version of transformers")(
    _architecture_not_a_model_class)
case("model-a-weights-file-with-labels", r"model\.pt is a file; .*or load the model in Python and pass the module")(
    _a_weights_file_with_labels)
case("output-a-name-too-long", r"has a name longer than file systems take \(255 bytes\)")(
    lambda c: vlmedge.export(str(c.hf_vit), c.work / ("x" * 300)))
case("model-no-config", r"(no config\.json|neither a local folder)")(_no_config)
case("model-weights-without-the-head", r"leave 2 parameter\(s\) of ViTForImageClassification unset \(classifier.bias, "
     r"classifier.weight\), which would be exported as random values")(_weights_without_the_head)
case("model-weights-of-a-wrapper", r"unset .* start with 'module.', which DistributedDataParallel")(_weights_of_a_wrapper)
case("model-peft-adapter-beside-the-model", r"holds a PEFT adapter .*merge_and_unload")(_peft_adapter_beside_the_model)
case("model-an-artifact-as-the-source", r"is a vlmedge artifact, not a model folder")(_an_artifact_as_the_source)
case("model-a-training-run", r"is a training run .*\(checkpoint-500\); pass one of them")(_a_training_run)
case("model-unknown-image-processor", r"cannot reproduce the image processor 'Mystery'")(_bad_processor)
case("export-over-a-folder-that-is-not-an-artifact", r"precious exists and is not a vlmedge artifact")(_output_not_an_artifact)


def _output_with_another_manifest(c: Ctx):
    """A folder holding someone else's manifest.json (a web app's) is not an artifact either."""
    _export_over(c, "webapp", {"manifest.json": '{"name": "My PWA"}', "index.html": "do not delete"})


case("export-over-a-folder-with-another-manifest", r"webapp exists and is not a vlmedge artifact")(
    _output_with_another_manifest)


def _output_under_a_file(c: Ctx):
    from vlmedge.artifact import ArtifactWriter

    ArtifactWriter(c.file("afile", b"x") / "sub")


case("export-under-a-file", r"Cannot write the artifact at .*afile.sub \(File exists\); choose an output path")(
    _output_under_a_file)


# -- the test -----------------------------------------------------------------------------------

def test_matrix_has_at_least_forty_cases():
    assert len(CASES) >= 40
    assert len({name for name, _, _ in CASES}) == len(CASES)
    kinds = {name.split("-")[0] for name, _, _ in CASES}
    assert {"image", "audio", "text", "array", "manifest", "artifact", "model"} <= kinds


@pytest.fixture(scope="module")
def classifier(vit_artifact):
    return vlmedge.load(vit_artifact)


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hardening-tokenizer")
    spec = write_tokenizer(folder)
    (folder / "spec.json").write_text(json.dumps(spec.to_dict()))
    return folder


@pytest.mark.parametrize("name, run, pattern", CASES, ids=[name for name, _, _ in CASES])
def test_bad_input_gives_a_clear_error_and_touches_nothing_outside(
        name, run, pattern, classifier, vit_artifact, hf_classifier_dir, tokenizer_folder, tmp_path,
        tmp_path_factory, monkeypatch):
    ctx = Ctx(work=tmp_path / "work", vit_artifact=vit_artifact, classifier=classifier,
              hf_vit=hf_classifier_dir("vit"), tokenizer_folder=tokenizer_folder)
    ctx.work.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "canary.txt").write_text("unchanged")
    monkeypatch.chdir(cwd)
    basetemp = tmp_path_factory.getbasetemp()
    before = tree_state(basetemp, exclude=(ctx.work,)), tree_state(REPO, repo_data_only=True)

    with pytest.raises(VlmedgeError, match=pattern) as info:
        run(ctx)
    message = str(info.value)
    if os.environ.get("VLMEDGE_SHOW_MESSAGES"):
        print(f"\n[{name}] {type(info.value).__name__}: {message}")
    assert message.endswith((".", ")", "!", "'")) and "Traceback" not in message, message
    assert type(info.value) is not VlmedgeError  # always a specific subclass

    after = tree_state(basetemp, exclude=(ctx.work,)), tree_state(REPO, repo_data_only=True)
    assert_unchanged(before[0], after[0], f"{name}: pytest's temporary tree outside the case's work folder")
    assert_unchanged(before[1], after[1], f"{name}: the repository's data files")


def test_the_pickle_payload_is_live(tmp_path):
    """The payload the matrix refuses really does write its marker when unpickled without
    restriction, so the matrix case proves something."""
    torch = pytest.importorskip("torch")
    marker = tmp_path / "LIVE-MARKER"
    torch.save({"x": _WritesMarker(marker)}, tmp_path / "payload.bin")
    torch.load(tmp_path / "payload.bin", weights_only=False)
    assert marker.exists()

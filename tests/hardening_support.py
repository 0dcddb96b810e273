"""Helpers for the hardening tests (issue 9); not a test module.

- ``tree_state`` / ``assert_unchanged``: what a bad input may not touch outside its folder.
- ``time_limit``: a per-case wall-clock limit for fuzz cases.
- ``write_tokenizer``: a small byte-level BPE ``tokenizer.json`` trained locally (no hub).
- ``audio_model`` / ``text_model`` / ``image_model``: tiny ONNX graphs with the inputs and
  outputs of an AST tagger and the two CLIP towers, for concurrency and soak tests that
  must not spend minutes exporting.
- ``pipeline_from``: a task pipeline around hand-built sessions and a manifest.
- ``mutate_bytes``: the byte-level mutations the fuzz tests apply to real files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import stat
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# Fuzz examples per target: small in the normal suite, larger on demand.
FUZZ_EXAMPLES = int(os.environ.get("VLMEDGE_FUZZ_EXAMPLES", "200"))
_SKIP_DIRS = {".venv", ".git", "build", "__pycache__", ".pytest_cache", ".hypothesis", "vlmedge.egg-info", "node_modules"}
_SOURCE_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".json", ".lock"}


# -- "nothing outside changed" ------------------------------------------------------------------

def _digest(path: Path) -> tuple[int, str]:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return info.st_size, "link:" + os.readlink(path)
    if not stat.S_ISREG(info.st_mode):  # a FIFO left by another case: opening it would block forever
        return info.st_size, f"special:{stat.S_IFMT(info.st_mode)}"
    if info.st_size > 4 * 1024**2:  # big files: size and mtime are enough to see a write
        return info.st_size, f"mtime:{info.st_mtime_ns}"
    return info.st_size, hashlib.sha256(path.read_bytes()).hexdigest()


def tree_state(root: Path, exclude: tuple[Path, ...] = (), repo_data_only: bool = False) -> dict[str, tuple[int, str]]:
    """relpath -> (size, digest) of every file under root, skipping `exclude` subtrees.

    With repo_data_only, source files (which other engineers edit while tests run) are
    skipped: what remains is data vlmedge could conceivably overwrite, and any new file.
    """
    excluded = {p.resolve() for p in exclude}
    state: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and (here / d).resolve() not in excluded
                       and not (repo_data_only and d.startswith("."))]  # others' scratch (.work, .cache)
        for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            path = here / name
            if repo_data_only and path.suffix in _SOURCE_SUFFIXES and path.exists():
                continue
            try:
                state[path.relative_to(root).as_posix()] = _digest(path)
            except FileNotFoundError:  # removed while walking: another process's temp file
                continue
    return state


def assert_unchanged(before: dict, after: dict, where: str) -> None:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), f"{where}: added {added}, removed {removed}, changed {changed}"


# -- time limits --------------------------------------------------------------------------------

class CaseTimeout(BaseException):
    """A fuzz case ran past its time limit (a hang). A BaseException, so that no
    `except Exception` in the code under test can swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raises CaseTimeout in the main thread after `seconds` (checked between bytecodes, so a
    loop in Python is caught; a hang inside C is caught when it returns). Elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise CaseTimeout(f"the case ran longer than {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- a local tokenizer --------------------------------------------------------------------------

CORPUS = [
    "a photo of a cat", "a photo of a dog", "a red circle on a white background", "the yellow star",
    "purple cross, portrait", "green square with alpha", "gray triangle", "a bird flying over the sea",
    "Ein Foto einer Katze", "un chien qui court", "日本語のテキスト", "emoji 🐱🐶 and punctuation!?",
] * 4


def write_tokenizer(folder: Path, context_length: int = 16):
    """Trains a byte-level BPE like CLIP's (NFC + lowercase, BOS/EOS) and writes
    folder/tokenizer.json; returns its TextPreprocessSpec."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from vlmedge.preprocess.text import TextPreprocessSpec

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    bos, eos = tok.token_to_id("<bos>"), tok.token_to_id("<eos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", bos), ("<eos>", eos)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return TextPreprocessSpec(context_length=context_length, pad_id=tok.token_to_id("<pad>"), bos_id=bos, eos_id=eos)


# -- tiny ONNX graphs ---------------------------------------------------------------------------

def _save(graph, path: Path) -> Path:
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def _weights(name: str, shape: tuple[int, ...], seed: int):
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def audio_model(path: Path, frames: int, mel_bins: int, labels: int, overflows_when_loud: bool = False) -> Path:
    """input_values (batch, frames, mel) -> logits (batch, labels): mean over time, then linear.
    overflows_when_loud: logits = exp(60 x the sum of the mean features), infinite in float32
    for a loud window and finite (zero) for a silent one."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", ["input_values", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["linear" if overflows_when_loud else "logits"]),
    ]
    weights = _weights("w", (mel_bins, labels), 1)
    if overflows_when_loud:
        nodes.append(helper.make_node("Exp", ["linear"], ["logits"]))
        weights = numpy_helper.from_array(np.full((mel_bins, labels), 60.0, np.float32), "w")
    graph = helper.make_graph(
        nodes, "audio",
        [helper.make_tensor_value_info("input_values", TensorProto.FLOAT, ["batch", frames, mel_bins])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", labels])],
        initializer=[numpy_helper.from_array(np.array([1], np.int64), "axes"), weights])
    return _save(graph, path)


def text_model(path: Path, vocab: int, context: int, dim: int) -> Path:
    """input_ids, attention_mask (batch, context) -> text_embeds (batch, dim): masked mean of embeddings."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "one"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "one"], ["count"], keepdims=1),
        helper.make_node("Div", ["summed", "count"], ["text_embeds"]),
    ]
    graph = helper.make_graph(
        nodes, "text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", context]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", context])],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch", dim])],
        initializer=[_weights("table", (vocab, dim), 2), numpy_helper.from_array(np.array([2], np.int64), "last"),
                     numpy_helper.from_array(np.array([1], np.int64), "one")])
    return _save(graph, path)


def image_model(path: Path, size: int, dim: int) -> Path:
    """pixel_values (batch, 3, size, size) -> image_embeds (batch, dim): channel means, then linear."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", ["pixel_values", "hw"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["image_embeds"]),
    ]
    graph = helper.make_graph(
        nodes, "image",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", dim])],
        initializer=[numpy_helper.from_array(np.array([2, 3], np.int64), "hw"), _weights("w", (3, dim), 3)])
    return _save(graph, path)


def model_calls(pipeline) -> list[int]:
    """The batch size of every call the pipeline's sessions make from now on (a spy: each
    session's run is wrapped, and still runs)."""
    calls: list[int] = []
    for session in pipeline.model.sessions.values():
        run = session.run
        session.run = lambda feeds, *args, _run=run, **kwargs: calls.append(len(next(iter(feeds.values())))) or \
            _run(feeds, *args, **kwargs)
    return calls


def hold_runs(session) -> tuple[threading.Event, threading.Event]:
    """Makes the session's backend runs wait inside Session.run until `release` is set; `inside`
    is set once one waits there (a run held in progress, for close() and fork())."""
    inside, release = threading.Event(), threading.Event()
    backend_run = session._run

    def held_run(feeds):
        inside.set()
        release.wait(30)
        return backend_run(feeds)

    session._run = held_run
    return inside, release


def graph_io(session) -> dict[str, Any]:
    return {"inputs": [i.to_dict() for i in session.inputs], "outputs": [o.to_dict() for o in session.outputs]}


def pipeline_from(task_class, root: Path, sessions: dict, manifest: dict, backend: str = "onnxruntime"):
    """A task pipeline around already-open sessions and a manifest (no export, no hashing)."""
    from vlmedge.artifact import Artifact
    from vlmedge.runtimes.select import ModelSessions

    manifest = {"schema_version": 1, "files": [], "graphs": {g: graph_io(s) for g, s in sessions.items()}, **manifest}
    return task_class(ModelSessions(Artifact(root=root, manifest=manifest), backend, "fp32", "cpu", sessions))


def tiny_audio_tagger(folder: Path, backend: str = "onnxruntime", overflows_when_loud: bool = False):
    """An AudioTagger on a tiny ONNX graph: 16 mel bins x 32 frames, 6 sigmoid labels."""
    from vlmedge.preprocess.audio import AudioPreprocessSpec
    from vlmedge.runtimes.base import open_session
    from vlmedge.tasks.audio import AudioTagger

    spec = AudioPreprocessSpec(num_mel_bins=16, max_length=32)
    path = audio_model(folder / "audio.onnx", spec.max_length, spec.num_mel_bins, 6, overflows_when_loud)
    session = open_session(to_backend(path, backend), backend=backend)
    manifest = {"task": "audio-classification", "preprocess": {"audio": spec.to_dict()},
                "labels": [f"tag{i}" for i in range(6)], "postprocess": {"activation": "sigmoid"}}
    return pipeline_from(AudioTagger, folder, {"model": session}, manifest, backend)


def tiny_clip(folder: Path, backend: str = "onnxruntime"):
    """A Clip pipeline on tiny ONNX towers and a locally trained tokenizer."""
    from tokenizers import Tokenizer

    from vlmedge.preprocess.image import ImagePreprocessSpec
    from vlmedge.runtimes.base import open_session
    from vlmedge.tasks.clip import Clip

    text_spec = write_tokenizer(folder, context_length=16)
    vocab = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()
    image_spec = ImagePreprocessSpec(size={"height": 16, "width": 16})
    sessions = {
        "image": open_session(to_backend(image_model(folder / "image.onnx", 16, 8), backend), backend=backend),
        "text": open_session(to_backend(text_model(folder / "text.onnx", vocab, 16, 8), backend), backend=backend),
    }
    manifest = {"task": "clip", "preprocess": {"image": image_spec.to_dict(), "text": text_spec.to_dict()},
                "labels": None, "postprocess": {"scoring": "softmax", "logit_scale": 100.0, "logit_bias": None,
                                                "normalized": False, "embedding_dim": 8}}
    return pipeline_from(Clip, folder, sessions, manifest, backend)


def to_backend(onnx_path: Path, backend: str) -> Path:
    """The file a backend reads: the ONNX file itself, or an OpenVINO IR converted from it."""
    if backend == "onnxruntime":
        return onnx_path
    if backend == "openvino":
        import openvino as ov

        xml = onnx_path.with_suffix(".xml")
        if not xml.exists():
            ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
        return xml
    raise ValueError(backend)


def cpu_backends() -> list[str]:
    """The CPU backends installed here, ONNX Runtime first."""
    from vlmedge.runtimes.base import available_backends

    present = available_backends()
    return [b for b in ("onnxruntime", "openvino") if b in present and (REPO / "runtimes" / f"{b}.py").is_file()]


# -- byte mutations -----------------------------------------------------------------------------

def mutate_bytes(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    """Applies (kind, position, value) operations: flip a bit, set a byte, insert, delete a
    run, truncate, or duplicate a run; positions wrap around the current length."""
    buf = bytearray(data)
    for kind, position, value in ops:
        if not buf:
            buf = bytearray([value & 0xFF])
            continue
        i = position % len(buf)
        kind %= 6
        if kind == 0:
            buf[i] ^= 1 << (value % 8)
        elif kind == 1:
            buf[i] = value & 0xFF
        elif kind == 2:
            buf[i:i] = bytes([value & 0xFF]) * (1 + value % 8)
        elif kind == 3:
            del buf[i:i + 1 + value % 64]
        elif kind == 4:
            del buf[i:]
        else:
            buf[i:i] = buf[i:i + 1 + value % 64]
    return bytes(buf)


def tiny_classifier_artifact(destination: Path, labels: int = 4, overflows_on_white: bool = False) -> Path:
    """A real image-classification artifact written by ArtifactWriter around a tiny ONNX
    graph (channel means -> linear -> logits): no torch, so harnesses can build one.
    overflows_on_white: logits = exp(60 x the sum of the channel means), which is infinite in
    float32 for a bright image (white: exp(180)) and finite for dark ones (and its parity inputs)."""
    from onnx import TensorProto, helper, numpy_helper

    from vlmedge.artifact import ArtifactWriter
    from vlmedge.preprocess.image import ImagePreprocessSpec
    from vlmedge.runtimes.base import open_session

    spec = ImagePreprocessSpec(size={"height": 16, "width": 16})
    with ArtifactWriter(destination) as writer:
        nodes = [helper.make_node("ReduceMean", ["pixel_values", "hw"], ["pooled"], keepdims=0),
                 helper.make_node("MatMul", ["pooled", "w"], ["linear" if overflows_on_white else "logits"])]
        weights = _weights("w", (3, labels), 4)
        if overflows_on_white:
            nodes.append(helper.make_node("Exp", ["linear"], ["logits"]))
            weights = numpy_helper.from_array(np.full((3, labels), 60.0, np.float32), "w")
        graph = helper.make_graph(
            nodes, "model",
            [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 16, 16])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", labels])],
            initializer=[numpy_helper.from_array(np.array([2, 3], np.int64), "hw"), weights])
        path = _save(graph, writer.path("onnx/model.fp32.onnx"))
        session = open_session(path)
        pixels = np.random.default_rng(5).standard_normal((3, 3, 16, 16)).astype(np.float32)
        if overflows_on_white:
            pixels = -np.abs(pixels)  # dark: the gate's inputs stay finite
        np.savez(writer.path("samples/parity.npz"), **{"model.input.pixel_values": pixels,
                                                       "model.reference.logits": session.run({"pixel_values": pixels})["logits"]})
        writer.add("samples/parity.npz", role="parity_inputs")
        writer.add("onnx/model.fp32.onnx", role="model", graph="model", target="onnx", precision="fp32",
                   parity={"passed": True, "samples": 1, "outputs": {"logits": {"cosine_min": 1.0, "max_abs": 0.0}}})
        return writer.commit({
            "task": "image-classification", "source": {"kind": "test"}, "graphs": {"model": graph_io(session)},
            "preprocess": {"image": spec.to_dict()}, "labels": [f"label{i}" for i in range(labels)],
            "postprocess": {"activation": "softmax"}, "versions": {}, "created": "2025-01-01T00:00:00+00:00",
        }).root


# -- seed files for the fuzzers ----------------------------------------------------------------

SAMPLES = REPO / "exporters" / "sample_data"


def image_seeds() -> list[bytes]:
    """Real files of every allowed format, small so that mutations land in interesting places."""
    import io

    from PIL import Image

    seeds = [(SAMPLES / "red-circle.jpg").read_bytes(), (SAMPLES / "green-square-rgba.png").read_bytes()]
    base = Image.open(SAMPLES / "purple-cross-portrait.jpg").convert("RGB").resize((24, 36))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated, so exif_transpose runs
    variants = [
        ("JPEG", base, {"exif": exif.tobytes(), "progressive": True}),
        ("PNG", base.convert("RGBA"), {}),
        ("PNG", base.convert("P", palette=Image.ADAPTIVE), {"transparency": 0}),
        ("PNG", base.convert("I;16"), {}),
        ("GIF", base.convert("P", palette=Image.ADAPTIVE), {"transparency": 3}),
        ("TIFF", base, {"compression": "tiff_lzw"}),
        ("TIFF", base.convert("L"), {}),
        ("BMP", base, {}),
        ("WEBP", base, {"lossless": True}),
        ("PPM", base, {}),
    ]
    for fmt, image, options in variants:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        seeds.append(buffer.getvalue())
    return seeds


def audio_seeds() -> list[bytes]:
    """WAV (16/24/32-bit, float, unsigned 8-bit, mu-law, 1-3 channels) and FLAC files, and a real header cut short."""
    import io

    import soundfile as sf

    rng = np.random.default_rng(0)
    seeds = []
    for rate, seconds, channels, fmt, subtype in [
        (16000, 0.05, 1, "WAV", "PCM_16"), (44100, 0.02, 2, "WAV", "FLOAT"), (8000, 0.1, 1, "WAV", "PCM_24"),
        (11025, 0.05, 1, "WAV", "PCM_U8"), (22050, 0.02, 3, "WAV", "PCM_32"), (16000, 0.05, 1, "WAV", "ULAW"),
        (48000, 0.02, 2, "FLAC", "PCM_16"),
    ]:
        buffer = io.BytesIO()
        sf.write(buffer, (0.3 * rng.standard_normal((int(rate * seconds), channels))).clip(-1, 1), rate,
                 format=fmt, subtype=subtype)
        seeds.append(buffer.getvalue())
    seeds.append((SAMPLES / "audio" / "chirp-up-16k-mono.wav").read_bytes()[:4096])  # a real header, cut short
    return seeds

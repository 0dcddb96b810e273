"""open_clip:ARCH — a CLIP (or SigLIP-style) model built by open_clip's own
``create_model(ARCH, pretrained=FILE)`` from a local checkpoint (never downloaded), exported
as the "clip" task: the image and text towers, a tokenizer.json, zero-shot scoring.

ARCH is a name open_clip knows (``open_clip.list_models()``), a path to a model-config
JSON (registered with ``open_clip.add_model_config``), or local-dir:FOLDER (a model repository
with open_clip_config.json and its weights, downloaded beforehand).

Graphs, as for Hugging Face CLIP models (see hf.clip), each with a dynamic batch axis:

    image   pixel_values (N, 3, H, W)  -> image_embeds (N, D)   model.encode_image
    text    input_ids (N, L)           -> text_embeds  (N, D)   model.encode_text

Embeddings are not normalised in the graph. Zero-shot scoring: exp(logit_scale), and
logit_bias with sigmoid scoring where the model has one (open_clip's SigLIP models).

The tokenizer is open_clip's SimpleTokenizer (CLIP's byte-level BPE) written for the
``tokenizers`` library: its vocabulary and merges, its special tokens, its padding with 0
and its truncation that keeps the end-of-text token. Its text cleaning is reproduced
except ftfy's text repair and HTML unescaping; the export checks the ids against open_clip's
tokenizer on the sample captions and the tokenizer probes and refuses any other difference.

Preprocessing is open_clip's eval transform for the model's preprocess_cfg (size, mean,
std, interpolation, resize_mode): resize_mode "shortest" (square) and "squash" are
reproduced; "longest" (resize and pad with fill_color) and non-square "shortest" are
refused by name. With ARCH + a checkpoint file, open_clip uses its default preprocess_cfg
(OpenAI mean/std, bicubic, shortest); a pretrained tag's own preprocessing comes with
local-dir: (its open_clip_config.json).
"""

from __future__ import annotations

import json
import os
import pickle
import string
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from vlmedge.artifact import sha256_file
from vlmedge.errors import ExportError, ModelNotFoundError, UnsupportedModelError, exception_line, first_line
from vlmedge.exporters.samples import image_parity_feeds
from vlmedge.exporters.sources.hf.clip import CAPTIONS_FILE, sample_captions, text_parity_feeds
from vlmedge.exporters.sources.timm import checkpoint_file, eval_transform_spec, import_library, json_safe
from vlmedge.exporters.spec import ExportSpec, GraphSpec
from vlmedge.preprocess.image import ImagePreprocessSpec
from vlmedge.preprocess.text import TextPreprocessSpec, TextTokenizer

TOKENIZER_FILE = "tokenizer.json"
MODEL_CLASSES = ("CLIP", "CustomTextCLIP")
# open_clip's SimpleTokenizer splits cleaned text with this pattern (re.IGNORECASE), after its special tokens.
WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class EncodeImage(torch.nn.Module):
    """pixel_values -> model.encode_image (not normalised)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with mha_fastpath_off():
            return self.model.encode_image(pixel_values)


class EncodeText(torch.nn.Module):
    """input_ids -> model.encode_text (not normalised).

    The ids enter the model as int32: its argmax pooling then runs on int32, which ONNX
    Runtime's ArgMax takes (Hugging Face's CLIP casts the same way); the embedding lookup
    and every value are unchanged (ids are below 2**31)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        with mha_fastpath_off():
            return self.model.encode_text(input_ids.to(torch.int32))


@contextmanager
def mha_fastpath_off():
    """torch.nn.MultiheadAttention's inference fast path is one fused operator
    (aten::_native_multi_head_attention) that torch.onnx cannot export; its standard path
    computes the same attention, so the graph and the torch reference both run that one."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


# -- the model ----------------------------------------------------------------------------

def _model_name(open_clip: Any, arch: str) -> tuple[str, bool]:
    """(the name to build, whether it is a local-dir: folder); a config JSON is registered."""
    if arch.startswith("local-dir:"):
        folder = Path(arch.removeprefix("local-dir:")).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise ModelNotFoundError(f"{folder} has no open_clip_config.json; pass a folder downloaded from an "
                                     "open_clip model repository.")
        return f"local-dir:{folder.resolve()}", True
    path = Path(arch).expanduser()
    if arch.endswith(".json") or path.is_file():
        if not path.is_file():
            raise ModelNotFoundError(f"There is no open_clip model config at {path}; check the path.")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UnsupportedModelError(f"Cannot read the open_clip model config {path}: {exc}") from None
        if not (isinstance(config, dict) and all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg"))):
            raise UnsupportedModelError(f"{path} is not an open_clip model config (it needs embed_dim, vision_cfg "
                                        "and text_cfg).")
        open_clip.add_model_config(path)  # open_clip's own registry, keyed by the file's stem
        return path.stem, False
    if open_clip.get_model_config(arch.replace("/", "-")) is None:
        raise UnsupportedModelError(
            f"open_clip has no model {arch!r}; pass a name from open_clip.list_models() or the path of a model-config JSON."
        )
    return arch, False


def _checkpoint(open_clip: Any, name: str, checkpoint: Any) -> Path:
    """The weights file; a pretrained tag open_clip would download is refused by name."""
    if isinstance(checkpoint, str) and not Path(checkpoint).expanduser().exists() \
            and open_clip.pretrained.is_pretrained_cfg(name.replace("/", "-"), checkpoint):
        raise UnsupportedModelError(
            f"{checkpoint!r} is open_clip's pretrained tag for {name}, which it would download, and vlmedge never "
            "downloads; download the weights where there is network and pass the file as checkpoint=PATH."
        )
    return checkpoint_file(checkpoint, "open_clip")


def _text_config(open_clip: Any, name: str, local: bool) -> dict[str, Any]:
    """The text tower's config; refuses what vlmedge's tokenizer conversion does not cover."""
    if local:
        config = json.loads(Path(name.removeprefix("local-dir:"), "open_clip_config.json").read_text(encoding="utf-8"))
        config = config.get("model_cfg", config)
    else:
        config = open_clip.get_model_config(name.replace("/", "-")) or {}
    text = dict(config.get("text_cfg") or {})
    if text.get("hf_tokenizer_name") or text.get("hf_model_name") or (not local and "siglip" in name.lower()):
        raise UnsupportedModelError(
            f"open_clip's {name} tokenizes with a Hugging Face tokenizer (or has a Hugging Face text tower); vlmedge "
            "exports open_clip models that use open_clip's own CLIP tokenizer, so export the model's Hugging Face "
            "version (e.g. SiglipModel) instead."
        )
    if "multimodal_cfg" in config:
        raise UnsupportedModelError(f"open_clip's {name} is a CoCa model; vlmedge exports CLIP-style two-tower models.")
    kwargs = dict(text.get("tokenizer_kwargs") or {})
    if set(kwargs) - {"clean"} or kwargs.get("clean", "lower") not in ("lower", "whitespace", "canonicalize"):
        raise UnsupportedModelError(f"vlmedge cannot reproduce open_clip's tokenizer settings {kwargs} of {name}.")
    return text


def _build(open_clip: Any, name: str, weights: Path | None) -> torch.nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a network
    try:
        model = open_clip.create_model(name, pretrained=None if weights is None else str(weights), device="cpu",
                                       precision="fp32", weights_only=True, require_pretrained=True,
                                       pretrained_image=False, pretrained_text=False)
    except pickle.UnpicklingError as exc:
        raise UnsupportedModelError(
            f"The checkpoint {weights} is a pickle that torch.load(weights_only=True) refuses ({first_line(exc, 160)}); "
            "vlmedge never unpickles checkpoints unrestricted: save the weights as safetensors."
        ) from None
    except Exception as exc:  # noqa: BLE001 - open_clip raises RuntimeError, ValueError, FileNotFoundError ...
        raise UnsupportedModelError(
            f"open_clip cannot build {name} from {weights or 'its folder'} ({exception_line(exc, 240)})."
        ) from None
    if type(model).__name__ not in MODEL_CLASSES:
        raise UnsupportedModelError(f"open_clip's {name} is a {type(model).__name__}; vlmedge exports "
                                    f"{' and '.join(MODEL_CLASSES)} models.")
    return model.eval()


# -- preprocessing and tokenizer ------------------------------------------------------------

def open_clip_preprocess(cfg: dict[str, Any]) -> ImagePreprocessSpec:
    """open_clip's eval ``image_transform`` for a preprocess_cfg, as a spec."""
    size = cfg.get("size", 224)
    height, width = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
    mode = cfg.get("resize_mode") or "shortest"
    interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"  # open_clip: else bicubic
    if cfg.get("interpolation") not in (None, "bicubic", "bilinear", "random"):
        raise UnsupportedModelError(f"open_clip has no interpolation {cfg.get('interpolation')!r}.")
    if mode == "squash":
        return eval_transform_spec(height, width, {"height": height, "width": width}, interpolation,
                                   cfg.get("mean"), cfg.get("std"), crop=False)
    if mode == "shortest" and height == width:
        return eval_transform_spec(height, width, {"shortest_edge": height}, interpolation, cfg.get("mean"),
                                   cfg.get("std"))
    why = ("ResizeKeepRatio for a non-square size" if mode == "shortest" else
           "a resize of the longest edge padded with fill_color" if mode == "longest" else "an unknown resize_mode")
    raise UnsupportedModelError(f"vlmedge cannot reproduce open_clip's resize_mode {mode!r} at {height}x{width} "
                                f"({why}); it reproduces 'shortest' at a square size and 'squash'.")


def _one_of(chars: str) -> str:
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in chars) + "]"


def clip_bpe_tokenizer(simple: Any, clean: str, out_dir: Path) -> TextPreprocessSpec:
    """Writes open_clip's SimpleTokenizer as ``out_dir/tokenizer.json``; returns its spec."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    merges = [pair for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda item: item[1])]
    tok = Tokenizer(BPE(vocab=dict(simple.encoder), merges=merges, end_of_word_suffix="</w>",
                        continuing_subword_prefix="", fuse_unk=False))
    spaces = _one_of("".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()))  # str.split()'s
    steps = [normalizers.NFC()]  # ftfy.fix_text normalises to NFC; its repairs are not reproduced
    if clean == "canonicalize":  # big_vision's canonicalize_text: "_" -> " ", ASCII punctuation removed
        steps += [normalizers.Replace("_", " "), normalizers.Replace(Regex(_one_of(string.punctuation)), "")]
    steps += [normalizers.Replace(Regex(spaces + "+"), " "), normalizers.Strip()]
    if clean in ("lower", "canonicalize"):
        steps.append(normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(steps)
    specials = [simple.decoder[i] for i in simple.all_special_ids]
    pattern = "(?i)" + "|".join([*(s.replace("|", "\\|") for s in specials), WORDS])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # Matched after cleaning, as SimpleTokenizer's pattern matches them in the cleaned text.
    tok.add_special_tokens([AddedToken(s, special=True, normalized=True) for s in specials])
    sot, eot = simple.decoder[simple.sot_token_id], simple.decoder[simple.eot_token_id]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", pair=f"{sot} $A {eot} $B {eot}",
        special_tokens=[(sot, simple.sot_token_id), (eot, simple.eot_token_id)])
    length = int(simple.context_length)
    tok.enable_truncation(max_length=length, strategy="longest_first", direction="right")
    tok.enable_padding(direction="right", pad_id=0, pad_token=tok.id_to_token(0), length=length)  # zeros, as open_clip
    tok.save(str(out_dir / TOKENIZER_FILE), pretty=False)
    return TextPreprocessSpec(tokenizer_file=TOKENIZER_FILE, context_length=length, pad_id=0,
                              bos_id=simple.sot_token_id, eos_id=simple.eot_token_id, lowercase=clean != "whitespace",
                              final_sigma=clean != "whitespace")  # SimpleTokenizer lowercases with str.lower()


def check_tokenizer(simple: Any, tokenizer: TextTokenizer, texts: list[str], repaired: Any) -> list[str]:
    """Compares the ids with open_clip's tokenizer, text by text. Returns the texts whose ids
    differ where open_clip's text repair (ftfy, HTML unescaping) changes the text; any other
    difference raises ExportError."""
    ours = tokenizer.encode(texts)["input_ids"]
    theirs = simple(texts).numpy()
    differing = []
    for text, a, b in zip(texts, ours, theirs):
        if (a == b).all():
            continue
        if repaired(text):
            differing.append(text)
            continue
        raise ExportError(
            f"The converted tokenizer differs from open_clip's on {text!r} ({a.tolist()} vs {b.tolist()}); nothing "
            "was written. Report it with the model name."
        )
    return differing


# -- the source ---------------------------------------------------------------------------

def from_open_clip(arch: str, task: str | None = None, checkpoint: Any = None, pretrained: Any = None,
                   context_length: Any = None, image_size: Any = None, **options: Any) -> ExportSpec:
    """The ExportSpec of ``open_clip:ARCH`` (see the module docstring).

    Args:
        checkpoint: the weights file (``pretrained`` is open_clip's name for it; a pretrained
            tag that open_clip would download is refused).
    """
    unknown = sorted(set(options) - {"reference"})
    if unknown:
        raise UnsupportedModelError(f"open_clip: sources take checkpoint=, not {', '.join(unknown)}.")
    if task not in (None, "clip"):
        raise UnsupportedModelError(f"open_clip: models are exported for the clip task, not '{task}'.")
    if image_size is not None:
        raise UnsupportedModelError("image_size does not apply to open_clip: models; they are exported at the size "
                                    "their preprocess_cfg gives.")
    if checkpoint is not None and pretrained is not None:
        raise UnsupportedModelError("Give the weights once: checkpoint=PATH (pretrained= is open_clip's name for it).")
    open_clip = import_library("open_clip")
    name, local = _model_name(open_clip, arch)
    weights = None if local else _checkpoint(open_clip, name, pretrained if checkpoint is None else checkpoint)
    if local and (checkpoint or pretrained):
        raise UnsupportedModelError("open_clip:local-dir: loads the weights saved in its folder; leave out checkpoint.")
    text_cfg = _text_config(open_clip, name, local)
    model = _build(open_clip, name, weights)
    simple = open_clip.get_tokenizer(name)
    if type(simple).__name__ != "SimpleTokenizer":
        raise UnsupportedModelError(f"open_clip's {name} tokenizes with {type(simple).__name__}; vlmedge exports "
                                    "open_clip models that use its SimpleTokenizer.")
    model_length = int(getattr(model, "context_length", None) or getattr(model.text, "context_length"))
    if context_length not in (None, model_length) or simple.context_length != model_length:
        raise UnsupportedModelError(f"open_clip's {name} adds position embeddings for exactly {model_length} tokens, "
                                    f"so its captions are {model_length} tokens long; leave out context_length.")

    image_spec = open_clip_preprocess(open_clip.get_model_preprocess_cfg(model))
    tmp = tempfile.TemporaryDirectory(prefix="vlmedge-open-clip-tokenizer-")
    text_spec = clip_bpe_tokenizer(simple, str(text_cfg.get("tokenizer_kwargs", {}).get("clean", "lower")),
                                   Path(tmp.name))
    tokenizer = TextTokenizer(Path(tmp.name) / TOKENIZER_FILE, text_spec)
    from vlmedge.exporters.tokenizer import PROBE_TEXTS

    basic_clean = open_clip.tokenizer.basic_clean
    check_tokenizer(simple, tokenizer, sample_captions(), lambda text: False)  # every sample caption id for id
    repaired = check_tokenizer(simple, tokenizer, list(PROBE_TEXTS), lambda text: basic_clean(text) != text.strip())

    image, text = EncodeImage(model), EncodeText(model)
    height, width = image_spec.output_size
    pixels, sample_files = image_parity_feeds(image_spec)
    example = tokenizer.encode(["a photo of a cat", "a diagram"])["input_ids"]
    with torch.no_grad():
        dim = int(image(torch.zeros(1, 3, height, width)).shape[-1])
    graphs = [
        GraphSpec(name="image", module=image, input_names=["pixel_values"], output_names=["image_embeds"],
                  example_inputs={"pixel_values": torch.randn(2, 3, height, width)},
                  dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
                  compare={"image_embeds": "embedding"}),
        GraphSpec(name="text", module=text, input_names=["input_ids"], output_names=["text_embeds"],
                  example_inputs={"input_ids": torch.from_numpy(example)},
                  dynamic_axes={"input_ids": {0: "batch"}, "text_embeds": {0: "batch"}},
                  compare={"text_embeds": "embedding"}),
    ]
    bias = getattr(model, "logit_bias", None)
    scoring = "softmax" if bias is None else "sigmoid"
    postprocess = {
        "activation": scoring, "scoring": scoring,
        "logit_scale": float(model.logit_scale.detach().exp().reshape(-1)[0]),
        "logit_bias": None if bias is None else float(bias.detach().reshape(-1)[0]),
        "normalized": False, "embedding_dim": dim,
    }
    source: dict[str, Any] = {
        "kind": "open_clip", "reference": options.get("reference") or f"open_clip:{arch}",
        "architecture": type(model).__name__, "model_name": name, "open_clip_version": open_clip.__version__,
        "preprocess_cfg": json_safe(open_clip.get_model_preprocess_cfg(model)),
        "text_pooling": str(getattr(model, "text_pool_type", None) or getattr(model.text, "pool_type", "")),
        "tokenizer": "open_clip SimpleTokenizer (ftfy text repair and HTML unescaping not reproduced: "
                     f"{len(repaired)} of {len(PROBE_TEXTS)} probe captions differ for that reason)",
    }
    if weights is not None:
        source.update(checkpoint=str(weights), checkpoint_sha256=sha256_file(weights))
    spec = ExportSpec(
        task="clip", graphs=graphs, preprocess={"image": image_spec.to_dict(), "text": text_spec.to_dict()},
        labels=None, postprocess=postprocess, source=source,
        parity_feeds={"image": {"pixel_values": pixels}, "text": text_parity_feeds(tokenizer, ["input_ids"])},
        extra_files={TOKENIZER_FILE: Path(tmp.name) / TOKENIZER_FILE, **sample_files,
                     **({"samples/captions.txt": CAPTIONS_FILE} if CAPTIONS_FILE.is_file() else {})},
    )
    spec._tokenizer_dir = tmp  # type: ignore[attr-defined]  # removed when the spec is collected
    return spec


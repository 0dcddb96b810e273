"""CLIP-style dual encoders from Hugging Face: CLIPModel (softmax scoring), SiglipModel
(sigmoid scoring), SigLIP2 (NaFlex, at a resolution the user chooses: hf.naflex),
ChineseCLIP, MetaCLIP 2, AltCLIP, ALIGN, BlipModel, and the contrastive heads of BLIP and
BLIP-2 retrieval; how each pools its text and scores a pair is data in TWO_TOWERS.

Two graphs, each with a dynamic batch axis:

    image   pixel_values (N, 3, H, W)             -> image_embeds (N, D)  (BLIP-2: (N, Q, D))
    text    input_ids (N, L) [, attention_mask]   -> text_embeds  (N, D)

BLIP-2's image embedding is one vector per Q-Former query token; its contrastive score of
a pair is the largest cosine over them (``postprocess["image_reduction"] = "max"``).

The embeddings are the *projected* ones (what ``get_image_features`` /
``get_text_features`` return), **not** L2-normalised in the graph: the graphs compute
exactly the source's functions, parity compares them without any post-step, and the
runtime normalises in numpy (``postprocess["normalized"] = False`` records this).

The wrappers call the model's own ``get_text_features`` / ``get_image_features``, so the
EOS pooling is the source's in both of its conventions (configs with ``eos_token_id == 2``
pool at the argmax of ``input_ids``; newer ones at the first ``eos_token_id``; both cast
the ids to int32 before ArgMax, which ONNX Runtime needs) and SigLIP's last-token pooling
and attention-pooling head come along unchanged.

Captions are tokenized to the context length the tokenizer pads to (CLIP 77, SigLIP
64). A text tower that pools at EOS or under an attention mask gives the same embedding
without the trailing padding, so its graph gets a dynamic sequence axis and the runtime
runs each batch at its longest caption (``_any_length``; benchmarks/clip_text_length.py).
SigLIP pools the last position, so its padding is part of the model and its length stays
fixed. The text graph takes an ``attention_mask`` exactly when the tokenizer hands one to
the model (``model_input_names``), so the graph computes what ``model(**tokenizer(...))`` does.
BERT-style tokenizers' ``token_type_ids`` are left out: for one caption they are all zero,
which is what the text model uses without them.

The manifest's ``postprocess`` holds what zero-shot scoring needs: ``scoring``
("softmax" or "sigmoid"), ``logit_scale`` (already exponentiated), ``logit_bias``
(SigLIP; null for CLIP), ``normalized``, ``embedding_dim`` and ``image_reduction`` (null,
or "max" over the image's vectors).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmedge.errors import UnsupportedModelError
from vlmedge.exporters.samples import SAMPLE_DIR, image_parity_feeds
from vlmedge.exporters.sources.hf.folder import load_model, refuse_if_unset, source_info
from vlmedge.exporters.sources.hf.processor import image_preprocess, naflex_or_processor_size
from vlmedge.exporters.spec import ExportSpec, GraphSpec
from vlmedge.preprocess.samples import caption_lines
from vlmedge.preprocess.text import TextTokenizer
from vlmedge.runtimes.base import trim_padding

CAPTIONS_FILE = SAMPLE_DIR / "captions.txt"
_UNSET_MAX_LENGTH = 1_000_000  # HF uses int(1e30) for "no limit"



@dataclass(frozen=True)
class TwoTower:
    """How one two-tower architecture pools its text and scores a pair."""

    scoring: str                  # how similarities become probabilities: "softmax" or "sigmoid"
    text_pooling: str             # "eos" (CLIP: argmax of the ids when eos_token_id == 2, else the first EOS),
                                  # "last" (SigLIP), "cls" (BERT / RoBERTa text towers)
    scale: str = "logit_scale"    # "logit_scale": exp(model.logit_scale); "temperature": 1 / model.temperature;
                                  # "none": 1 (the score is the cosine)
    position_offset: bool = False  # RoBERTa positions start after pad_token_id: max_position_embeddings - pad - 1
    heads: str = "features"       # "features": get_image_features / get_text_features; "itc": BLIP's
                                  # contrastive heads, vision_proj / text_proj of the CLS tokens; "qformer":
                                  # BLIP-2's, vision_projection of the query outputs / text_projection of CLS
    text_config: str = "text_config"  # the config section of the text tower (BLIP-2: its Q-Former's)
    image_reduction: str | None = None  # None: one image vector; "max": the image graph gives (N, Q, D) and a
                                        # pair's cosine is the largest over Q (BLIP-2's query tokens)


TWO_TOWERS: dict[str, TwoTower] = {
    "CLIPModel": TwoTower("softmax", "eos"),
    "SiglipModel": TwoTower("sigmoid", "last"),
    "Siglip2Model": TwoTower("sigmoid", "last"),  # NaFlex: exported at image_size= (hf.naflex)
    "ChineseCLIPModel": TwoTower("softmax", "cls"),
    "MetaClip2Model": TwoTower("softmax", "eos"),
    # CLIPSeg's own CLIP towers (its segmentation decoder is not part of zero-shot classification)
    "CLIPSegModel": TwoTower("softmax", "eos"),
    "AltCLIPModel": TwoTower("softmax", "cls", position_offset=True),
    "AlignModel": TwoTower("softmax", "cls", scale="temperature"),  # logits = cosine / temperature
    # BLIP retrieval's contrastive score is the plain cosine (its ITC temperature is not in the checkpoint)
    "BlipForImageTextRetrieval": TwoTower("softmax", "cls", scale="none", heads="itc"),
    "BlipModel": TwoTower("softmax", "cls"),  # CLIP-like: pooled (dense + tanh) CLS, projected; logit_scale
    # BLIP-2's contrastive (ITC) score is the plain cosine too, maximised over the 32 query tokens
    "Blip2ForImageTextRetrieval": TwoTower("softmax", "cls", scale="none", heads="qformer",
                                           text_config="qformer_config", image_reduction="max"),
}
# Two-tower architectures vlmedge refuses, and why.
REFUSED: dict[str, str] = {
    "Tipsv2Model": "its image processor exists only for torchvision (tensor resizing), which Pillow does not "
                   "reproduce bit for bit; its vision tower, Tipsv2VisionModel, exports for image embeddings when "
                   "saved with a Pillow processor of the same settings",
    "VideoPrismClipModel": "it embeds video clips (pixel_values_videos, frames over time), and vlmedge's "
                           "two-tower models embed single images",
}
ARCHITECTURES = frozenset(TWO_TOWERS) | frozenset(REFUSED)  # what hf.infer_task sends here


def refusal(arch: str) -> str | None:
    """The sentence refusing `arch` by name (REFUSED), or None; the export and the listing
    of supported architectures both say it."""
    return f"vlmedge cannot export {arch} as a two-tower model: {REFUSED[arch]}." if arch in REFUSED else None


def _pooled(output: Any) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output with the projected
    embedding in pooler_output (transformers 5)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        pooled = output[1] if isinstance(output, (tuple, list)) else output["pooler_output"]
    return pooled


class ImageTower(torch.nn.Module):
    """pixel_values -> the projected image embedding, by the model's own get_image_features."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixel_values))


class TextTower(torch.nn.Module):
    """input_ids [, attention_mask] -> the projected text embedding, by get_text_features."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return _pooled(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


class ContrastiveImageHead(torch.nn.Module):
    """BLIP retrieval: pixel_values -> vision_proj of the vision tower's CLS token (its ITC embedding)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.vision_proj(self.model.vision_model(pixel_values=pixel_values)[0][:, 0, :])


class ContrastiveTextHead(torch.nn.Module):
    """BLIP retrieval: input_ids [, attention_mask] -> text_proj of the text encoder's CLS token,
    the text encoder run alone (no image cross-attention), as use_itm_head=False does."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.model.text_encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]
        return self.model.text_proj(hidden[:, 0, :])


class QFormerImageHead(torch.nn.Module):
    """BLIP-2 retrieval: pixel_values -> vision_projection of each Q-Former query output, (N, Q, D):
    the query tokens cross-attend to the vision tower's tokens, as use_image_text_matching_head=False does."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        image = self.model.vision_model(pixel_values=pixel_values)[0]
        mask = torch.ones_like(image[..., 0], dtype=torch.long)
        queries = self.model.query_tokens.expand(image.shape[0], -1, -1)
        out = self.model.qformer(query_embeds=queries, encoder_hidden_states=image, encoder_attention_mask=mask)[0]
        return self.model.vision_projection(out.to(self.model.vision_projection.weight.dtype))


class QFormerTextHead(torch.nn.Module):
    """BLIP-2 retrieval: input_ids [, attention_mask] -> text_projection of the Q-Former's CLS output,
    the Q-Former run on the text alone (no query tokens). The caption's tokens are those without the
    image-token placeholders Blip2Processor may put in front, which the model strips in this mode."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        if not getattr(model.config.qformer_config, "use_qformer_text_input", True):
            raise UnsupportedModelError(
                f"{type(model).__name__}'s Q-Former has no text layers (use_qformer_text_input=False), so it cannot "
                "embed captions; export a BLIP-2 retrieval checkpoint whose Q-Former takes text."
            )
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.model.embeddings(input_ids=input_ids)
        out = self.model.qformer(query_embeds=embeds, query_length=0, attention_mask=attention_mask)[0]
        return self.model.text_projection(out[:, 0, :].to(self.model.text_projection.weight.dtype))


HEADS = {"features": (ImageTower, TextTower), "itc": (ContrastiveImageHead, ContrastiveTextHead),
         "qformer": (QFormerImageHead, QFormerTextHead)}  # TwoTower.heads -> (image graph, text graph)


# -- parity captions -------------------------------------------------------------------

def sample_captions() -> list[str]:
    """The bundled captions (exporters/sample_data/captions.txt), one per line."""
    return caption_lines(CAPTIONS_FILE) if CAPTIONS_FILE.is_file() else []


_ALPHABETS = (
    "abcdefghijklmnopqrstuvwxyz" * 4 + "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789.,;:!?'\"()-_/&%$#@*+=<>[]{}",
    "àáâäãåçèéêëìíîïñòóôöõùúûüýÿßæøœ",
    "日本語中文字符한국어텍스트猫犬車",
    "🙂🐶🐱🍜🚲🌆⭐❤️👍🏽🇫🇷",
)


def random_captions(n: int, seed: int, context_length: int) -> list[str]:
    """Seeded random captions: words of random letters, digits, punctuation, accents,
    CJK and emoji, of random length, from one word to longer than the context (truncation)."""
    rng = np.random.default_rng(seed)
    captions = []
    for i in range(n):
        n_words = int(rng.integers(1, 8)) if i % 2 == 0 else int(rng.integers(context_length, 2 * context_length))
        words = []
        for _ in range(n_words):
            alphabet = _ALPHABETS[int(rng.choice(len(_ALPHABETS), p=[0.6, 0.1, 0.1, 0.1, 0.1]))]
            length = int(rng.integers(1, 10))
            words.append("".join(alphabet[j] for j in rng.integers(0, len(alphabet), size=length)))
        captions.append(" ".join(words))
    return captions


_PLAIN_WORDS = {
    "colour": ("red", "green", "blue", "yellow", "black", "white", "purple", "orange", "grey", "pink"),
    "size": ("small", "large", "tiny", "big", "old", "bright", "dark", "round"),
    "thing": ("cat", "dog", "car", "circle", "square", "star", "cross", "triangle", "tree", "house", "bird", "person",
              "bicycle", "flower", "boat", "cup"),
}
_PLAIN_TEMPLATES = ("a photo of a {thing}.", "a {colour} {thing}", "a {size} {colour} {thing}", "{thing}",
                    "a photo of a {size} {thing}.", "a {thing} on a {colour} background", "{colour}",
                    "a drawing of a {colour} {thing}.")


def plain_captions(n: int, seed: int) -> list[str]:
    """Seeded short captions of everyday words, as zero-shot prompts and search queries are:
    the random and probe captions are long or unusual text, and an int8 text tower can pass on
    those while missing on these (fitted to the others' activations)."""
    rng = np.random.default_rng(seed)

    def words() -> dict[str, str]:  # one of each kind, whichever the template uses
        return {kind: choices[int(rng.integers(len(choices)))] for kind, choices in _PLAIN_WORDS.items()}

    return [_PLAIN_TEMPLATES[i % len(_PLAIN_TEMPLATES)].format(**words()) for i in range(n)]


def text_parity_feeds(tokenizer: TextTokenizer, input_names: list[str], n_random: int = 8,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """The bundled captions, the tokenizer probes (accents, emoji, CJK, control
    characters, the empty string, over-long text), seeded random captions and seeded plain
    short ones, tokenized by the artifact's own tokenizer."""
    from vlmedge.exporters.tokenizer import PROBE_TEXTS

    texts = (sample_captions() + list(PROBE_TEXTS) + random_captions(n_random, seed, tokenizer.spec.context_length)
             + plain_captions(2 * n_random, seed))
    encoded = tokenizer.encode(texts)
    return {name: encoded[name] for name in input_names}


# -- the source ------------------------------------------------------------------------

def _max_positions(config: Any, tower: TwoTower) -> int:
    """The text model's usable positions (RoBERTa's first pad_token_id + 1 are never used)."""
    text = getattr(config, tower.text_config)
    positions = int(getattr(text, "max_position_embeddings", 77))
    return positions - int(getattr(text, "pad_token_id", 1) or 0) - 1 if tower.position_offset else positions


def _context_length(hf_tokenizer: Any, max_positions: int) -> int:
    """The length every caption is padded to: the tokenizer's model_max_length, at most the
    text model's usable positions (all of them when unset)."""
    n = getattr(hf_tokenizer, "model_max_length", None)
    if isinstance(n, int) and 0 < n < _UNSET_MAX_LENGTH:
        return min(n, max_positions)
    return max_positions


def _any_length(text: torch.nn.Module, tower: TwoTower, spec: Any, inputs: list[str],
                feeds: dict[str, np.ndarray]) -> bool:
    """Whether the text graph may take captions of any length up to the context (a dynamic
    sequence axis; the runtime then drops the padding every caption of a batch ends with).

    Only a tower that pools at EOS (causal: nothing before EOS sees what follows) or at CLS
    under an attention mask, padded on the right, gives the same embedding without trailing
    padding; SigLIP pools its last position, which padding is part of. That is checked on the
    source itself: the eight shortest parity captions at the full context and trimmed to the
    longest of them must give the same embeddings."""
    if tower.text_pooling not in ("eos", "cls") or "attention_mask" not in inputs or spec.padding_side != "right":
        return False
    shortest = np.argsort(feeds["attention_mask"].sum(axis=1), kind="stable")[:8]
    full = {name: feeds[name][shortest] for name in inputs}
    trimmed = trim_padding(full)
    if trimmed["input_ids"].shape[1] == full["input_ids"].shape[1]:
        return False  # nothing to compare: even the shortest captions fill the context
    with torch.no_grad():
        a, b = (text(**{k: torch.from_numpy(v) for k, v in f.items()}).numpy() for f in (full, trimmed))
    return bool(np.abs(a - b).max() <= 1e-4 * max(float(np.abs(a).max()), 1e-6))


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, ImportError (sentencepiece) ...
        raise UnsupportedModelError(
            f"Cannot load the tokenizer saved in {folder} ({type(exc).__name__}: {exc}); save the model's "
            "tokenizer beside it (tokenizer.save_pretrained(folder)) so vlmedge can ship it."
        ) from None


def clip_model(folder: Path, config: Any, arch: str, reference: str, context_length: int | None = None,
               image_size: Any = None, **_: Any) -> ExportSpec:
    """A two-tower model of TWO_TOWERS -> an "image" and a "text" graph, tokenizer.json, and
    the logit scale (and SigLIP's bias) for zero-shot scoring.

    Args:
        context_length: tokens per caption; default: the tokenizer's model_max_length, at
            most the text model's max_position_embeddings.
        image_size: SigLIP2 (NaFlex) only, and required there: the export resolution, an int
            or (height, width), multiples of the patch size.
    """
    from vlmedge.exporters.tokenizer import TOKENIZER_FILE, export_tokenizer

    tower = TWO_TOWERS.get(arch)
    if tower is None:
        raise UnsupportedModelError(refusal(arch) or
                                    f"vlmedge exports CLIP-style models of {', '.join(TWO_TOWERS)}, not {arch}.")
    naflex = naflex_or_processor_size(folder, config, arch, image_size, "a CLIP model")
    max_positions = _max_positions(config, tower)
    if context_length is not None and not (isinstance(context_length, int) and 0 < context_length <= max_positions):
        raise UnsupportedModelError(
            f"context_length must be an int from 1 to the text model's {max_positions} positions, not {context_length!r}."
        )
    image_spec = naflex.preprocess if naflex else image_preprocess(folder)
    hf_tokenizer = _load_tokenizer(folder)
    length = context_length or _context_length(hf_tokenizer, max_positions)
    tmp = tempfile.TemporaryDirectory(prefix="vlmedge-clip-tokenizer-")
    text_spec = export_tokenizer(hf_tokenizer, tmp.name, context_length=length)
    tokenizer = TextTokenizer(Path(tmp.name) / TOKENIZER_FILE, text_spec)

    model = load_model(folder, arch)
    text_inputs = [n for n in ("input_ids", "attention_mask") if n in hf_tokenizer.model_input_names]
    if "input_ids" not in text_inputs:
        raise UnsupportedModelError(f"The tokenizer in {folder} gives the model no input_ids; vlmedge cannot export it.")
    image_head, text_head = HEADS[tower.heads]
    image = image_head(naflex.images(model) if naflex else model)
    text = text_head(model)

    height, width = image_spec.output_size
    pixels, sample_files = image_parity_feeds(image_spec)
    text_feeds = text_parity_feeds(tokenizer, text_inputs)
    example_text = tokenizer.encode(["a photo of a cat", "a diagram"])
    with torch.no_grad():
        dim = int(image(torch.zeros(1, 3, height, width)).shape[-1])
        text_dim = int(text(*(torch.from_numpy(example_text[name]) for name in text_inputs)).shape[-1])
    if text_dim != dim:  # zero-shot scores image against text embeddings; transformers' own forward fails too
        raise UnsupportedModelError(f"{folder}: its image tower embeds in {dim} dimensions and its text tower in "
                                    f"{text_dim}, so they cannot be compared; fix the towers' projection sizes.")
    image_graph = GraphSpec(
        name="image",
        module=image,
        input_names=["pixel_values"],
        output_names=["image_embeds"],
        example_inputs={"pixel_values": torch.randn(2, 3, height, width)},
        dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
        compare={"image_embeds": "embedding"},
    )
    any_length = _any_length(text, tower, text_spec, text_inputs, text_feeds)
    text_axes = {0: "batch", 1: "sequence"} if any_length else {0: "batch"}
    text_graph = GraphSpec(
        name="text",
        module=text,
        input_names=text_inputs,
        output_names=["text_embeds"],
        example_inputs={name: torch.from_numpy(example_text[name]) for name in text_inputs},
        dynamic_axes={**{name: text_axes for name in text_inputs}, "text_embeds": {0: "batch"}},
        compare={"text_embeds": "embedding"},
    )
    scoring = tower.scoring
    logit_bias = getattr(model, "logit_bias", None)
    refuse_if_unset(*(getattr(model, name, None) for name in ("logit_scale", "logit_bias", "temperature")))
    if tower.scale == "temperature":
        scale = 1.0 / float(model.temperature.detach().reshape(-1)[0])
    elif tower.scale == "none":
        scale = 1.0
    else:
        scale = float(model.logit_scale.detach().exp().reshape(-1)[0])
    postprocess = {
        "activation": scoring,
        "scoring": scoring,
        "logit_scale": scale,
        "logit_bias": None if logit_bias is None else float(logit_bias.detach().reshape(-1)[0]),
        "normalized": False,
        "embedding_dim": dim,
        "image_reduction": tower.image_reduction,
    }
    source = {**source_info(reference, folder, arch, config), **(naflex.source() if naflex else {})}
    source["text_pooling"] = tower.text_pooling
    if tower.text_pooling == "eos":
        source["text_pooling"] = "argmax" if getattr(config.text_config, "eos_token_id", None) == 2 else "first_eos"
    if tower.scale == "temperature":
        source["temperature"] = 1.0 / scale
    spec = ExportSpec(
        task="clip",
        graphs=[image_graph, text_graph],
        preprocess={"image": image_spec.to_dict(), "text": text_spec.to_dict()},
        labels=None,
        postprocess=postprocess,
        source=source,
        parity_feeds={"image": {"pixel_values": pixels}, "text": text_feeds},
        extra_files={TOKENIZER_FILE: Path(tmp.name) / TOKENIZER_FILE, **sample_files,
                     **({"samples/captions.txt": CAPTIONS_FILE} if CAPTIONS_FILE.is_file() else {})},
    )
    spec._tokenizer_dir = tmp  # type: ignore[attr-defined]  # removed when the spec is collected
    return spec

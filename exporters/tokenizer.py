"""Export a Hugging Face text tokenizer as a torch-free ``tokenizer.json``.

``export_tokenizer`` serialises the tokenizer's ``tokenizers`` backend (normalizer,
pre-tokenizer, model, BOS/EOS post-processor) with the truncation and padding the
exported text graph expects, writes it to ``out_dir/tokenizer.json`` and returns the
``TextPreprocessSpec`` for the manifest. It then checks the result: the runtime's
``TextTokenizer`` must give the same ``input_ids`` and ``attention_mask`` as the
Hugging Face tokenizer called with ``padding="max_length", truncation=True`` on a set of
probe captions, or nothing is written and ``ExportError`` names the caption.

Supported: any tokenizer with a ``tokenizers`` backend (in transformers 5 that is
``CLIPTokenizer`` itself, ``Siglip2Tokenizer``, ``GemmaTokenizer`` ...), and slow
tokenizers transformers can convert (``convert_slow_tokenizer``), provided the converted
tokenizer passes the check, and SigLIP's slow SentencePiece tokenizer (``SiglipTokenizer``),
whose Python canonicalisation (lowercase, punctuation removed, whitespace collapsed) becomes
normalizers in front of the SentencePiece model (``_siglip_backend``; needs sentencepiece and
protobuf, in the export extra). One known difference: a caption that itself ends with the
literal EOS text ("</s>") gets a second EOS here, which the slow tokenizer leaves out.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from vlmedge.errors import ExportError, UnsupportedModelError
from vlmedge.preprocess.text import TextPreprocessSpec, TextTokenizer

TOKENIZER_FILE = "tokenizer.json"
DEFAULT_CONTEXT_LENGTH = 77  # CLIP's; used when the tokenizer records no model_max_length
_UNSET_MAX_LENGTH = 1_000_000  # HF uses int(1e30) for "no limit"

# Captions the export is checked on: accents, emoji, CJK, punctuation runs, mixed case,
# whitespace of every kind, control characters, special-token text, the empty string
# and captions longer than any context.
PROBE_TEXTS: tuple[str, ...] = (
    "a photo of a cat",
    "A Photo Of A DOG",
    "",
    " ",
    "café naïve résumé Ångström Straße İstanbul ÉCOLE",
    "e\u0301 combining accents o\u0308",
    "ΟΔΟΣ σας, ΣΑΣ ΑΣ.Β Σ",  # a word-final capital sigma lowercases to "ς" in Python, "σ" in tokenizers
    "a dog 🐶 and a cat 🐱 👩‍👩‍👧 🇫🇷",
    "日本語のテキスト 中文字符 한국어 텍스트",
    "!!!???...,,,;;;:::---___***",
    "don't won't it's we're they've I'm you'll he'd",
    "  multiple   spaces\tand\ttabs\nand\n\nnewlines\r\n  ",
    "numbers 1234567890 3.14159 1e-5 -42 ½ ² ٣",
    "<|startoftext|> special <|endoftext|> tokens </s> <pad> <unk>",
    "mixed\x00nul\x07bell\x1b[0m and \u200b zero\u200dwidth \ufeff bom",
    "url http://example.com/a?b=c&d=e#f email a.b@c.de &amp; &lt;html&gt;",
    "▁metaspace ▁ char and ␣ and \u00a0nbsp\u2003em",
    " ".join(["word"] * 200),
    "a" * 500,
    "🙂" * 100,
    "the quick brown fox jumps over the lazy dog " * 40,
)


def _backend_json(hf_tokenizer) -> str:
    """The tokenizer's ``tokenizers`` pipeline as a JSON string (converting a slow one)."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        return backend.to_str()
    if _is_siglip_sentencepiece(hf_tokenizer):
        return _siglip_backend(hf_tokenizer).to_str()
    try:
        from transformers.convert_slow_tokenizer import convert_slow_tokenizer

        return convert_slow_tokenizer(hf_tokenizer).to_str()
    except Exception as e:  # noqa: BLE001 - the converters raise ValueError, ImportError, KeyError...
        raise UnsupportedModelError(
            f"{type(hf_tokenizer).__name__} has no `tokenizers` backend and transformers cannot convert it ({e}); "
            "save the model's fast tokenizer (its tokenizer.json) beside it and export again."
        ) from None


def _is_siglip_sentencepiece(hf_tokenizer) -> bool:
    """SigLIP's slow SentencePiece tokenizer: no ``tokenizers`` backend, a Python canonicaliser."""
    return (getattr(hf_tokenizer, "backend_tokenizer", None) is None
            and callable(getattr(hf_tokenizer, "canonicalize_text", None))
            and bool(getattr(hf_tokenizer, "vocab_file", None)))


def _siglip_backend(hf_tokenizer):
    """SigLIP's SentencePiece tokenizer (``SiglipTokenizer``, slow) as a ``tokenizers`` pipeline.

    The slow tokenizer puts "▁" before the caption, splits off special-token text, and
    canonicalises each piece in Python (lowercase, ASCII punctuation removed, whitespace runs
    collapsed, stripped) before SentencePiece, which reads "▁" as a space and adds a dummy
    prefix only where the caption began; EOS is appended. Here: the same "▁" as the text
    spec's ``prefix``, the canonicalisation as normalizers, then SentencePiece's precompiled
    character map and its whitespace rules, the Unigram model transformers' converter builds
    from the proto, and a post-processor appending EOS. The export's probe check compares
    the result with the source id for id.
    """
    import string
    import sys

    from tokenizers import AddedToken, Regex, normalizers, processors
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    try:
        proto = import_protobuf().ModelProto()
        proto.ParseFromString(Path(hf_tokenizer.vocab_file).read_bytes())
    except Exception as e:  # noqa: BLE001 - protobuf missing, or not a SentencePiece model
        raise UnsupportedModelError(
            f"Cannot read the SentencePiece model of {type(hf_tokenizer).__name__} ({type(e).__name__}: {e}); "
            "install the export extra (sentencepiece, protobuf) and save the tokenizer's spiece.model beside the model."
        ) from None
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=False)
    if tok is None or proto.trainer_spec.model_type != 1 or any(piece.type == 4 for piece in proto.pieces):
        raise UnsupportedModelError(f"{type(hf_tokenizer).__name__}'s SentencePiece model is not a plain Unigram "
                                    "model; vlmedge cannot convert it.")

    def one_of(chars: str) -> str:
        return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in chars) + "]"

    spaces = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())  # Python's \s, exactly
    steps = [normalizers.Lowercase()] if getattr(hf_tokenizer, "do_lower_case", False) else []
    steps += [normalizers.Replace(Regex(one_of(string.punctuation)), ""),
              normalizers.Replace(Regex(one_of(spaces) + "+"), " "), normalizers.Strip()]
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    # SentencePiece: "▁" and spaces are one whitespace; runs collapse, the end is stripped
    steps += [normalizers.Replace(Regex("[ ▁]+"), "▁"), normalizers.Replace(Regex("▁\\z"), "")]
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None
    specials = [str(t) for t in hf_tokenizer.all_special_tokens]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    eos = str(hf_tokenizer.eos_token)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}",
                                                       special_tokens=[(eos, hf_tokenizer.eos_token_id)])
    return tok


def _normalizer_dict(tok) -> dict | None:
    """The normalizer's own JSON (cheaper than serialising the whole vocabulary)."""
    normalizer = tok.normalizer
    if normalizer is None:
        return None
    try:
        return json.loads(normalizer.__getstate__())
    except Exception:  # noqa: BLE001 - an older tokenizers without __getstate__: read the whole file
        return json.loads(tok.to_str()).get("normalizer")


def _has_lowercase(normalizer: dict | None) -> bool:
    if not normalizer:
        return False
    if normalizer.get("type") == "Lowercase":
        return True
    if normalizer.get("type") == "BertNormalizer":
        return bool(normalizer.get("lowercase"))
    return any(_has_lowercase(n) for n in normalizer.get("normalizers") or [])


def _context_length(hf_tokenizer, context_length: int | None) -> int:
    if context_length is not None:
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 1:
            raise ExportError(f"context_length must be a positive int, not {context_length!r}.")
        return context_length
    n = getattr(hf_tokenizer, "model_max_length", None)
    if isinstance(n, int) and 0 < n < _UNSET_MAX_LENGTH:
        return n
    return DEFAULT_CONTEXT_LENGTH


def _token_id(hf_tokenizer, name: str) -> int | None:
    value = getattr(hf_tokenizer, f"{name}_token_id", None)
    return int(value) if isinstance(value, int) else None


def export_tokenizer(
    hf_tokenizer,
    out_dir: str | Path,
    *,
    context_length: int | None = None,
    check: bool = True,
) -> TextPreprocessSpec:
    """Writes ``out_dir/tokenizer.json`` reproducing ``hf_tokenizer``; returns its spec.

    Args:
        hf_tokenizer: a transformers tokenizer (``CLIPTokenizer``, ``Siglip2Tokenizer``, ...).
            It is not modified.
        out_dir: folder to write into (created if needed).
        context_length: tokens per caption; defaults to the tokenizer's
            ``model_max_length``, or 77 when that is unset.
        check: compare the exported tokenizer with ``hf_tokenizer`` on ``PROBE_TEXTS``.

    Raises:
        UnsupportedModelError: the tokenizer has no ``tokenizers`` form.
        ExportError: the exported tokenizer differs from the source on a probe caption;
            nothing is left in ``out_dir``.
    """
    from tokenizers import Tokenizer

    length = _context_length(hf_tokenizer, context_length)
    if getattr(hf_tokenizer, "split_special_tokens", False):
        raise UnsupportedModelError(
            "The tokenizer splits special-token text (split_special_tokens=True), which tokenizer.json cannot "
            "record; load it with split_special_tokens=False to export it."
        )
    tok = Tokenizer.from_str(_backend_json(hf_tokenizer))  # a copy: the source stays untouched
    tok.encode_special_tokens = False
    # HF leaves the truncation/padding of its last call on the backend: start clean.
    tok.no_truncation()
    tok.no_padding()

    pad_id = _token_id(hf_tokenizer, "pad")
    pad_token = getattr(hf_tokenizer, "pad_token", None)
    eos_token_id = _token_id(hf_tokenizer, "eos")
    if pad_id is None:  # HF itself cannot pad then; pad with EOS as OpenAI CLIP does
        pad_id = eos_token_id if eos_token_id is not None else 0
        pad_token = tok.id_to_token(pad_id)
    padding_side = getattr(hf_tokenizer, "padding_side", "right")
    truncation_side = getattr(hf_tokenizer, "truncation_side", "right")

    # What the post-processor actually adds, not what the config names.
    bos_token_id = _token_id(hf_tokenizer, "bos")
    specials = tok.encode("", add_special_tokens=True).ids
    bos_id = bos_token_id if specials and bos_token_id is not None and specials[0] == bos_token_id else None
    eos_id = eos_token_id if specials and eos_token_id is not None and specials[-1] == eos_token_id else None

    processor = tok.post_processor
    n_special = processor.num_special_tokens_to_add(False) if processor is not None else 0
    if n_special >= length:
        raise ExportError(f"context_length {length} leaves no room for text next to {n_special} special tokens.")

    # Recorded in tokenizer.json too, so it is usable on its own (e.g. by other runtimes);
    # TextTokenizer re-applies them from the spec.
    tok.enable_truncation(max_length=length, stride=0, strategy="longest_first", direction=truncation_side)
    tok.enable_padding(
        direction=padding_side,
        pad_id=pad_id,
        pad_type_id=int(getattr(hf_tokenizer, "pad_token_type_id", 0) or 0),
        pad_token=str(pad_token) if pad_token is not None else "",
        length=length,
    )
    spec = TextPreprocessSpec(
        tokenizer_file=TOKENIZER_FILE,
        context_length=length,
        pad_id=pad_id,
        bos_id=bos_id,
        eos_id=eos_id,
        lowercase=_has_lowercase(_normalizer_dict(tok)) or bool(getattr(hf_tokenizer, "do_lower_case", False)),
        padding="max_length",
        padding_side=padding_side,
        truncation_side=truncation_side,
        prefix="▁" if _is_siglip_sentencepiece(hf_tokenizer) else "",
        # the one source here that lowercases in Python; PROBE_TEXTS find any other
        final_sigma=_is_siglip_sentencepiece(hf_tokenizer) and bool(getattr(hf_tokenizer, "do_lower_case", False)),
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / TOKENIZER_FILE
    fd, tmp = tempfile.mkstemp(prefix=".tokenizer.", suffix=".json", dir=out)
    os.close(fd)
    try:
        tok.save(tmp, pretty=False)
        if check:
            mismatch = compare_with_source(hf_tokenizer, TextTokenizer(tmp, spec), PROBE_TEXTS)
            if mismatch is not None:
                raise ExportError(
                    f"The exported tokenizer differs from {type(hf_tokenizer).__name__} on caption "
                    f"{mismatch[0]!r} ({mismatch[1]}); this tokenizer cannot be exported faithfully, so nothing "
                    "was written. Report it with the model name."
                )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return spec


def compare_with_source(hf_tokenizer, tokenizer: TextTokenizer, texts) -> tuple[str, str] | None:
    """The first caption (and what differs) on which ``tokenizer`` disagrees with ``hf_tokenizer``.

    The reference is ``hf_tokenizer(text, padding="max_length", max_length=L, truncation=True)``;
    without a pad token, HF cannot pad, so only the unpadded ids are compared.
    """
    spec = tokenizer.spec
    can_pad = getattr(hf_tokenizer, "pad_token_id", None) is not None
    for text in texts:
        ours = tokenizer.encode(text)
        ids = ours["input_ids"][0].tolist()
        mask = ours["attention_mask"][0].tolist()
        try:
            ref = hf_tokenizer(
                text,
                padding="max_length" if can_pad else False,
                max_length=spec.context_length,
                truncation=True,
            )
        except Exception as e:  # noqa: BLE001 - the source itself failed; nothing to compare
            return text, f"the source tokenizer raised {type(e).__name__}: {e}"
        ref_ids, ref_mask = list(ref["input_ids"]), list(ref.get("attention_mask", [1] * len(ref["input_ids"])))
        if not can_pad:
            kept = [i for i, m in zip(ids, mask) if m]
            if kept != ref_ids:
                return text, f"ids {kept} vs {ref_ids}"
            continue
        if ids != ref_ids:
            return text, f"input_ids {ids} vs {ref_ids}"
        if mask != ref_mask:
            return text, f"attention_mask {mask} vs {ref_mask}"
    return None


__all__ = ["PROBE_TEXTS", "TOKENIZER_FILE", "compare_with_source", "export_tokenizer"]

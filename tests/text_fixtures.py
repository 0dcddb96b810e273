"""Shared helpers for the text-preprocessing tests (not a conftest: import them explicitly).

``clip_tokenizer_dir`` rebuilds the real CLIP BPE tokenizer (49,408 tokens) from the
vocabulary file that ships inside the ``open_clip_torch`` wheel, exactly the way
OpenAI's CLIP and open_clip build their ``SimpleTokenizer``, and saves it as a Hugging
Face ``CLIPTokenizer`` folder (vocab.json + merges.txt + tokenizer files). No model hub
is touched.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import pytest

CLIP_VOCAB_SIZE = 49408
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def open_clip_bpe_path() -> Path:
    """The gzipped BPE file inside the installed open_clip package, or skip the test."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "open_clip_torch is not installed; install it with "
            "`pip install --no-deps open_clip_torch` to test against the real CLIP vocabulary"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return path
    pytest.skip("open_clip is installed but ships no bpe_simple_vocab_16e6.txt.gz")


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    lines = gzip.open(open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(merge) for merge in merges]
    vocab += [CLIP_BOS, CLIP_EOS]
    assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)
    return {token: i for i, token in enumerate(vocab)}, tuple(merges)


def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of the original CLIP tokenizer; skips when open_clip is missing."""
    vocab, merges = _clip_vocab_and_merges()
    return dict(vocab), list(merges)


def clip_tokenizer_dir(tmp_path: Path) -> Path:
    """Write the real CLIP tokenizer as a Hugging Face CLIPTokenizer folder; return it.

    The folder holds vocab.json and merges.txt (the slow/original format) plus what
    ``CLIPTokenizer.save_pretrained`` writes, with ``model_max_length`` 77 as in the
    OpenAI checkpoints. Load it with ``CLIPTokenizer.from_pretrained(folder)``; pass
    ``pad_token="!"`` to get the other padding convention.
    """
    vocab, merges = clip_vocab_and_merges()
    from transformers import CLIPTokenizer  # imported late: the skip above comes first

    out = Path(tmp_path) / "clip-tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with open(out / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    # Loading the two files works for the slow (transformers 4) and tokenizers-backed
    # (transformers 5) CLIPTokenizer alike.
    tokenizer = CLIPTokenizer.from_pretrained(out, model_max_length=77)
    tokenizer.save_pretrained(out)
    return out


def tiny_gemma_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small byte-fallback BPE vocabulary in the Gemma / SigLIP2 layout (▁ for spaces)."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-éü日本語":
        vocab.setdefault(c, len(vocab))
    merges = []
    for a, b in [
        ("▁", "a"), ("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "c"), ("a", "t"), ("▁c", "at"),
        ("o", "g"), ("▁", "d"), ("▁d", "og"), ("▁", "p"), ("h", "o"), ("t", "o"), ("▁p", "ho"),
        ("▁pho", "to"), ("▁", "o"), ("▁o", "f"), ("日", "本"), ("e", "r"), ("i", "n"), ("▁", "in"),
    ]:
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))
    return vocab, merges


def tiny_sentencepiece_tokenizer(class_name: str = "Siglip2Tokenizer", **kwargs):
    """A tokenizers-backed Gemma-family tokenizer (``Siglip2Tokenizer`` or ``GemmaTokenizer``)
    on ``tiny_gemma_vocab``; kwargs (``add_eos_token``, ``add_bos_token``, ``padding_side``,
    ``model_max_length`` ...) go to the constructor."""
    import transformers

    cls = getattr(transformers, class_name, None)
    if cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {class_name}")
    vocab, merges = tiny_gemma_vocab()
    return cls(vocab=vocab, merges=merges, **kwargs)

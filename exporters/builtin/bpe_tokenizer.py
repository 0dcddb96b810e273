"""A CLIP-layout byte-level BPE tokenizer, learned from a text corpus with ``tokenizers``.

OpenAI CLIP's tokenizer is a ``vocab.json`` + ``merges.txt`` pair whose vocabulary is laid
out as: the 256 byte symbols (GPT-2's reversible byte -> printable unicode table), the same
256 with the end-of-word suffix ``</w>``, the merged tokens in merge order, then
``<|startoftext|>`` and ``<|endoftext|>``. `build_tokenizer_files` learns the merges from a
corpus with the ``tokenizers`` BPE trainer under CLIP's normalisation (NFC, whitespace,
lower-case) and pre-tokenisation, and writes both files in that layout, so
``transformers.CLIPTokenizer(vocab_file, merges_file)`` loads them. Every byte is in the
vocabulary, so any text tokenizes (into byte-level pieces at worst), never to unk.

Used by train_shapes_clip.py, which feeds it the captions of ``builtin:shapes-clip``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP / GPT-2's reversible byte -> printable unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tokenizer_files(out_dir: Path, corpus: Iterable[str]) -> tuple[Path, Path]:
    """Learns byte-level BPE merges from `corpus` with `tokenizers` (CLIP's pre-tokenization
    and `</w>` word ends) and writes vocab.json + merges.txt in OpenAI CLIP's layout."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=4096,  # an upper bound: training stops once every corpus word is one token
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        continuing_subword_prefix="",
    )
    tok.train_from_iterator(corpus, trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]

    byte_symbols = list(_bytes_to_unicode().values())
    vocab_list = byte_symbols + [b + "</w>" for b in byte_symbols]
    known = set(vocab_list)
    for a, b in merges:
        assert a in known and b in known, (a, b)
        if a + b not in known:
            vocab_list.append(a + b)
            known.add(a + b)
    vocab_list += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(vocab_list)}

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab_file, merges_file

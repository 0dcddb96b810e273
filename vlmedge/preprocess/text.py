"""Caption tokenization for CLIP-style text encoders, without torch or transformers.

The artifact carries a ``tokenizer.json`` for the Hugging Face ``tokenizers`` library,
written by ``vlmedge.exporters.tokenizer.export_tokenizer`` so that it reproduces the
source model's Hugging Face tokenizer exactly (normalizer, pre-tokenizer, BPE or
unigram model, BOS/EOS post-processing). ``TextTokenizer`` loads it and applies the
truncation and padding recorded in ``TextPreprocessSpec``, giving the fixed-shape
``input_ids`` / ``attention_mask`` arrays the exported text graph expects.

Behaviour worth knowing:

* Captions longer than the context length are truncated, never rejected; the special
  tokens (EOS for CLIP) are kept. Very long captions are cut to a prefix before
  tokenizing when the result provably does not change (see ``_safe_prefix``), so a
  1 MB caption costs milliseconds, not seconds.
* Python strings can hold code points UTF-8 cannot encode: lone surrogates such as
  ``"\\ud800"`` (from broken JSON or ``surrogateescape`` decoding). ``tokenizers`` refuses
  them, so they are replaced with U+FFFD (the replacement character) before
  tokenizing; a well-formed surrogate *pair* is joined into the character it encodes.
  NUL and other control characters are passed through unchanged (they tokenize as in
  Hugging Face).
* ``encode`` may be called from several threads at once: each call borrows a private
  ``tokenizers.Tokenizer`` from a small pool, because a ``Tokenizer`` shared across
  threads can fail with "Already borrowed".
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from vlmedge.errors import ArtifactError, InputError
from vlmedge.preprocess import spec_from_dict

_PADDINGS = ("max_length", "longest")
_SIDES = ("right", "left")


@dataclass(frozen=True)
class TextPreprocessSpec:
    """Everything besides ``tokenizer.json`` needed to turn captions into model input.

    ``pad_id``, ``bos_id`` and ``eos_id`` are the ids the source tokenizer uses (CLIP:
    BOS 49406, EOS 49407; OpenAI checkpoints pad with EOS, others with 0 / ``"!"``).
    ``bos_id``/``eos_id`` are ``None`` when the tokenizer adds no such token (SigLIP has
    no BOS). ``lowercase`` records whether the tokenizer lowercases; the lowercasing
    itself lives in ``tokenizer.json``'s normalizer. ``padding`` is ``"max_length"``
    (every caption padded to ``context_length``, what exported graphs with a static
    sequence axis need) or ``"longest"`` (pad to the longest caption in the batch).
    """

    tokenizer_file: str = "tokenizer.json"
    context_length: int = 77
    pad_id: int = 49407
    bos_id: int | None = 49406
    eos_id: int | None = 49407
    lowercase: bool = True
    padding: str = "max_length"
    padding_side: str = "right"
    truncation_side: str = "right"
    prefix: str = ""  # put before every caption before tokenizing (SigLIP's SentencePiece tokenizer: "▁")
    # The source lowercases in Python (str.lower), which writes a word-final capital sigma as
    # "ς"; tokenizer.json's Lowercase maps each character alone, to "σ" (with_final_sigmas)
    final_sigma: bool = False

    def __post_init__(self) -> None:
        def is_int(v) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        for name in ("context_length", "pad_id"):
            value = getattr(self, name)
            if not is_int(value):
                raise ArtifactError(f"Text spec field '{name}' is {value!r}, not an int; re-export the artifact.")
            object.__setattr__(self, name, int(value))
        for name in ("bos_id", "eos_id"):
            value = getattr(self, name)
            if value is not None and not is_int(value):
                raise ArtifactError(f"Text spec field '{name}' is {value!r}, not an int or null; re-export the artifact.")
            object.__setattr__(self, name, None if value is None else int(value))
        for name in ("lowercase", "final_sigma"):
            if not isinstance(getattr(self, name), bool):
                raise ArtifactError(f"Text spec field '{name}' is {getattr(self, name)!r}, not a bool; re-export the "
                                    "artifact.")
        for name in ("tokenizer_file", "padding", "padding_side", "truncation_side", "prefix"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ArtifactError(f"Text spec field '{name}' is {value!r}, not a string; re-export the artifact.")
        checks = [
            (self.tokenizer_file.strip() != "", "tokenizer_file must name a file"),
            (self.context_length >= 1, "context_length must be at least 1"),
            (all(i >= 0 for i in (self.pad_id, self.bos_id, self.eos_id) if i is not None),
             "token ids must not be negative"),
            (self.padding in _PADDINGS, f"padding must be one of {list(_PADDINGS)}"),
            (self.padding_side in _SIDES and self.truncation_side in _SIDES, "sides must be 'right' or 'left'"),
        ]
        for ok, why in checks:
            if not ok:
                raise ArtifactError(f"Invalid text spec: {why}; fix the spec or re-export the artifact.")

    def to_dict(self) -> dict:
        """Returns the spec as a JSON-ready dict of plain Python values."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("prefix", "final_sigma"):  # what specs without them have always written
            if not values[name]:
                del values[name]
        return values

    @classmethod
    def from_dict(cls, d: dict) -> TextPreprocessSpec:
        """Reads a dict written by ``to_dict``; missing fields take their defaults.

        Raises:
            ArtifactError: ``d`` is not a dict, has unknown fields, or has invalid values.
        """
        return spec_from_dict(cls, d, "text")


def with_final_sigmas(text: str) -> str:
    """``text`` with each capital sigma that Python's ``str.lower()`` lowercases to a word-final
    "ς" (Unicode's Final_Sigma rule: after a cased letter, before none) written "ς" already.

    Apart from that rule ``str.lower()`` maps each character alone, so the sigma at
    ``text[i]`` is at ``sum(len(c.lower()) for c in text[:i])`` in the lowered text."""
    lowered = text.lower()
    out, at = [], 0
    for char in text:
        out.append("ς" if char == "Σ" and lowered[at] == "ς" else char)
        at += len(char.lower())
    return "".join(out)


def clean_text(text: str) -> str:
    """Makes ``text`` encodable as UTF-8, which ``tokenizers`` requires.

    Lone surrogates become U+FFFD; a high+low surrogate pair becomes the character it
    encodes. Any other string is returned unchanged (the common case costs one
    ``str.encode``).
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        # UTF-16 is the one codec where a surrogate pair means its character: round-trip
        # through it, keeping surrogates on the way out and replacing unpaired ones on the
        # way back.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class _Slot:
    """One private tokenizer (and, lazily, an untruncated twin) for one caller at a time."""

    __slots__ = ("tok", "raw")

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.raw: Tokenizer | None = None


class TextTokenizer:
    """Turns captions into ``input_ids`` / ``attention_mask`` exactly as the source tokenizer did.

    Args:
        tokenizer_file: a ``tokenizers`` JSON file (the artifact's ``tokenizer.json``).
        spec: context length, pad/BOS/EOS ids and padding mode.

    Raises:
        ArtifactError: the file is missing, unreadable or not a valid tokenizer, or the
            spec's ids do not fit its vocabulary.
    """

    # Captions up to this many characters (times the context length) are tokenized whole;
    # longer ones first try to cut a prefix of _PREFIX_CHARS_PER_TOKEN * context_length.
    _PREFIX_CHARS_PER_TOKEN = 16
    _MIN_PREFIX_CHARS = 1024

    def __init__(self, tokenizer_file: str | Path, spec: TextPreprocessSpec) -> None:
        if not isinstance(spec, TextPreprocessSpec):
            raise ArtifactError(f"spec is a {type(spec).__name__}, not a TextPreprocessSpec; pass the artifact's text spec.")
        path = Path(tokenizer_file)
        try:
            self._json = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ArtifactError(f"Tokenizer file {path} does not exist; re-export the artifact or fix its path.") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ArtifactError(f"Tokenizer file {path} cannot be read ({e}); re-export the artifact.") from None
        self.path = path
        self.spec = spec
        self._lock = threading.Lock()
        self._idle: list[_Slot] = []

        first = self._new_slot()  # validates the file once, up front
        tok = first.tok
        vocab_size = self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(spec, name)
            if value is not None and value >= vocab_size:
                raise ArtifactError(
                    f"Text spec {name}={value} is outside the vocabulary of {path} ({vocab_size} tokens); "
                    "re-export the artifact."
                )
        processor = tok.post_processor
        self._num_special = processor.num_special_tokens_to_add(False) if processor is not None else 0
        if self._num_special >= spec.context_length:
            raise ArtifactError(
                f"context_length {spec.context_length} leaves no room for text next to the tokenizer's "
                f"{self._num_special} special tokens; re-export the artifact."
            )
        added = [t.content for t in tok.get_added_tokens_decoder().values()]
        # Chars near a prefix cut that may still change (a special token cut in half, a
        # combining mark, a contraction): generous, as it only costs a longer prefix.
        self._margin = max(64, 2 * max((len(a) for a in added), default=0))
        self._idle.append(first)

    # -- pool ----------------------------------------------------------------------------

    def _new_slot(self) -> _Slot:
        try:
            tok = Tokenizer.from_str(self._json)
        except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
            raise ArtifactError(f"Tokenizer file {self.path} is not a tokenizers file that tokenizers "
                                f"{_tokenizers_version()} reads ({e}); re-export the artifact, or upgrade tokenizers "
                                "(pip install -U tokenizers) if it was exported with a newer one.") from None
        spec = self.spec
        tok.enable_truncation(
            max_length=spec.context_length, stride=0, strategy="longest_first", direction=spec.truncation_side
        )
        pad_token = tok.id_to_token(spec.pad_id)
        tok.enable_padding(
            direction=spec.padding_side,
            pad_id=spec.pad_id,
            pad_type_id=0,
            pad_token=pad_token if pad_token is not None else "",
            length=spec.context_length if spec.padding == "max_length" else None,
        )
        return _Slot(tok)

    def _acquire(self) -> _Slot:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._new_slot()  # outside the lock: building one takes a while

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            self._idle.append(slot)

    # -- encoding ------------------------------------------------------------------------

    def encode(self, texts: str | list[str]) -> dict[str, np.ndarray]:
        """Tokenizes one caption or a batch of them.

        Returns:
            ``{"input_ids": (N, L) int64, "attention_mask": (N, L) int64}`` with
            ``L == spec.context_length`` for ``padding="max_length"``.

        Raises:
            InputError: ``texts`` is not a string or a non-empty list of strings.
        """
        batch = self._check(texts)
        slot = self._acquire()
        try:
            batch = [self._prepare(slot, t) for t in batch]
            encodings = slot.tok.encode_batch(batch)
        finally:
            self._release(slot)
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    __call__ = encode

    @staticmethod
    def _check(texts) -> list[str]:
        if isinstance(texts, str):
            return [texts]
        if isinstance(texts, np.ndarray) and texts.ndim == 1 and texts.dtype.kind == "U":
            texts = texts.tolist()
        if isinstance(texts, (bytes, bytearray)):
            raise InputError("Captions must be str, not bytes; decode them first, e.g. text.decode('utf-8').")
        if not isinstance(texts, (list, tuple)):
            raise InputError(f"Captions must be a str or a list of str, not {type(texts).__name__}; pass the text itself.")
        if len(texts) == 0:
            raise InputError("The list of captions is empty; pass at least one caption (an empty string is fine).")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"Caption {i} is a {type(t).__name__}, not a str; pass every caption as text.")
        return list(texts)

    def _prepare(self, slot: _Slot, text: str) -> str:
        text = self.spec.prefix + text
        if self.spec.final_sigma and "Σ" in text:
            text = with_final_sigmas(text)
        if len(text) > 4 * self._prefix_chars and self.spec.truncation_side == "right":
            text = self._safe_prefix(slot, text)
        return clean_text(text)

    @property
    def _prefix_chars(self) -> int:
        return max(self._MIN_PREFIX_CHARS, self._PREFIX_CHARS_PER_TOKEN * self.spec.context_length)

    def _safe_prefix(self, slot: _Slot, text: str) -> str:
        """A prefix of ``text`` that tokenizes, after truncation, exactly as ``text`` does.

        Truncation keeps the first ``budget`` content tokens. Tokenizers' normalizers and
        pre-tokenizers act locally, so every *word* (pre-token) that ends before the last
        word of a prefix, and more than a margin before the cut, is normalized, split and
        BPE-encoded exactly as in the whole text. When the ``budget``-th token lies in such
        a word the prefix is safe. When it lies in the prefix's last word (one huge word,
        e.g. unspaced CJK), the prefix is accepted only if doubling it leaves the first
        ``budget`` ids unchanged. Otherwise the prefix grows 4x; the whole text is the
        fallback.
        """
        if slot.raw is None:
            raw = Tokenizer.from_str(self._json)
            raw.no_truncation()
            raw.no_padding()
            slot.raw = raw
        raw = slot.raw
        budget = self.spec.context_length - self._num_special
        cut = self._prefix_chars
        while 2 * cut < len(text):
            # Cleaning is local too (it only joins or replaces surrogates), so prefixes are
            # cleaned one by one and a huge caption is never cleaned whole.
            prefix = clean_text(text[:cut])
            enc = raw.encode(prefix, add_special_tokens=False)
            if len(enc.ids) > budget:
                end = enc.offsets[budget - 1][1]
                word, last_word = enc.word_ids[budget - 1], enc.word_ids[-1]
                if end <= len(prefix) - self._margin:
                    if word is None or last_word is None or word != last_word:
                        return text[:cut]
                    longer = raw.encode(clean_text(text[: 2 * cut]), add_special_tokens=False)
                    if longer.ids[:budget] == enc.ids[:budget]:
                        return text[: 2 * cut]
            cut *= 4
        return text

    def __repr__(self) -> str:
        return f"TextTokenizer({str(self.path)!r}, context_length={self.spec.context_length})"


def load_text_tokenizer(folder: str | Path, spec: TextPreprocessSpec | dict) -> TextTokenizer:
    """Builds a ``TextTokenizer`` from an artifact folder and its (dict) text spec."""
    if isinstance(spec, dict):
        spec = TextPreprocessSpec.from_dict(spec)
    return TextTokenizer(Path(folder) / spec.tokenizer_file, spec)


__all__ = ["TextPreprocessSpec", "TextTokenizer", "clean_text", "load_text_tokenizer"]


def _tokenizers_version() -> str:
    import tokenizers

    return getattr(tokenizers, "__version__", "(unknown version)")


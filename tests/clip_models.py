"""Tiny CLIP-style Hugging Face models of the real classes, seeded, saved with
save_pretrained beside their tokenizer and Pillow image processor (no hub is touched).

Configs:
    clip-legacy   CLIPModel, eos_token_id == 2: pools at the argmax of input_ids (pre-#24773 configs)
    clip          CLIPModel, eos_token_id == 49407: pools at the first EOS; saved with
                  CLIPProcessor (one processor_config.json instead of preprocessor_config.json)
                  (both CLIP configs have the same seeded weights and an added token above EOS,
                  so the two poolings differ exactly on captions that contain it)
    siglip        SiglipModel with sigmoid scoring and a logit bias, a small Gemma-style BPE
                  tokenizer that appends EOS, padded on the right to 64 tokens
"""

from __future__ import annotations

import math
from pathlib import Path

CONFIGS = ("clip-legacy", "clip", "siglip")
SIGLIP_CONTEXT = 64
EXTRA_TOKEN = "<|extra|>"  # added to the CLIP tokenizers with id 49408, above EOS (49407)


_TOKENIZER_DIR: list[Path] = []


def _clip_tokenizer(root: Path) -> Path:
    """The real CLIP BPE tokenizer folder, built once per process (it takes a few seconds)."""
    from tests.text_fixtures import clip_tokenizer_dir

    if not _TOKENIZER_DIR or not (_TOKENIZER_DIR[0] / "tokenizer.json").is_file():
        _TOKENIZER_DIR[:] = [clip_tokenizer_dir(root / "clip-tokenizer-source")]
    return _TOKENIZER_DIR[0]


def tiny_clip_folder(kind: str, root: Path) -> Path:
    import torch
    import transformers as t

    from tests.text_fixtures import tiny_sentencepiece_tokenizer

    folder = Path(root) / kind
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2)
    torch.manual_seed(0)
    if kind in ("clip-legacy", "clip"):
        tokenizer = t.CLIPTokenizer.from_pretrained(_clip_tokenizer(Path(root)))
        # An added token above EOS: legacy (argmax) pooling then picks it, new pooling the EOS.
        tokenizer.add_tokens([EXTRA_TOKEN])
        eos = 2 if kind == "clip-legacy" else tokenizer.eos_token_id
        config = t.CLIPConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=77, eos_token_id=eos,
                             bos_token_id=tokenizer.bos_token_id if eos != 2 else 0, pad_token_id=1),
            vision_config=vision, projection_dim=16, logit_scale_init_value=math.log(100.0))
        model = t.CLIPModel(config)
        processor = t.CLIPImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    elif kind == "siglip":
        tokenizer = tiny_sentencepiece_tokenizer("Siglip2Tokenizer", padding_side="right", add_eos_token=True,
                                                 model_max_length=SIGLIP_CONTEXT)
        config = t.SiglipConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=SIGLIP_CONTEXT,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             bos_token_id=tokenizer.bos_token_id),
            vision_config=vision)
        model = t.SiglipModel(config)
        with torch.no_grad():
            model.logit_scale.fill_(math.log(30.0))
            model.logit_bias.fill_(-1.5)
        processor = t.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    else:
        raise ValueError(kind)
    model.eval().save_pretrained(folder)
    if kind == "clip":  # transformers 5's combined processor_config.json ({"image_processor": ...})
        t.CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    else:  # tokenizer files + preprocessor_config.json
        tokenizer.save_pretrained(folder)
        processor.save_pretrained(folder)
    return folder

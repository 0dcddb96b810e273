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


def tiny_siglip(text_config: dict, vision_config: dict, naflex: bool = False):
    """A SiglipModel (a Siglip2Model when naflex) with sigmoid scale 30 and bias -1.5, and its
    Pillow image processor (naflex_processor() for SigLIP2)."""
    import torch
    import transformers as t

    config_class, model_class = (t.Siglip2Config, t.Siglip2Model) if naflex else (t.SiglipConfig, t.SiglipModel)
    model = model_class(config_class(text_config=text_config, vision_config=vision_config))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(30.0))
        model.logit_bias.fill_(-1.5)
    return model, naflex_processor() if naflex else t.SiglipImageProcessorPil(size={"height": 32, "width": 32})


# -- SigLIP2 (NaFlex) at a fixed resolution --------------------------------------------------------

NAFLEX_SIZE = (32, 48)  # (height, width) the SigLIP2 tests export at: a 4x6 grid of 8-pixel patches
NAFLEX_PATCH = 8
NAFLEX_VISION = dict(patch_size=NAFLEX_PATCH, num_patches=16, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=2)  # learned positions: a 4x4 grid, resized to 4x6


def naflex_processor():
    """A Siglip2 Pillow processor whose max_num_patches is the export grid's size, so that it
    resizes an image of aspect NAFLEX_SIZE to exactly NAFLEX_SIZE with no padding patches."""
    import transformers as t

    height, width = NAFLEX_SIZE
    return t.Siglip2ImageProcessorPil(patch_size=NAFLEX_PATCH,
                                      max_num_patches=(height // NAFLEX_PATCH) * (width // NAFLEX_PATCH))


def naflex_images(paths) -> list:
    """The images at `paths` resized to the aspect of NAFLEX_SIZE at 2, 3 and 4 times its size,
    which the NaFlex processor's own smart resize brings back to exactly NAFLEX_SIZE (the
    fixed-resolution export resizes any image to it; both then see the same pixels)."""
    from transformers.image_utils import load_image

    height, width = NAFLEX_SIZE
    return [load_image(str(p)).resize((width * (2 + i % 3), height * (2 + i % 3))) for i, p in enumerate(paths)]


def naflex_inputs(processor, images) -> dict:
    """The processor's output for `images`, checked to be the export's grid with no padding patch."""
    inputs = processor(images, return_tensors="pt")
    grid = [NAFLEX_SIZE[0] // NAFLEX_PATCH, NAFLEX_SIZE[1] // NAFLEX_PATCH]
    assert inputs["spatial_shapes"].tolist() == [grid] * len(images), inputs["spatial_shapes"]
    assert bool(inputs["pixel_attention_mask"].all())
    return dict(inputs)


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
        model, processor = tiny_siglip(
            dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, max_position_embeddings=SIGLIP_CONTEXT, pad_token_id=tokenizer.pad_token_id,
                 eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id), vision)
    else:
        raise ValueError(kind)
    model.eval().save_pretrained(folder)
    if kind == "clip":  # transformers 5's combined processor_config.json ({"image_processor": ...})
        t.CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    else:  # tokenizer files + preprocessor_config.json
        tokenizer.save_pretrained(folder)
        processor.save_pretrained(folder)
    return folder


# -- other two-tower models (tests/test_coverage_two_tower.py) ----------------------------------

TWO_TOWERS = ("chinese-clip", "metaclip-2", "altclip", "align", "siglip-sentencepiece", "blip-itr", "blip",
              "blip2-itr", "siglip2", "clipseg")
TWO_TOWER_CONTEXT = 32
_WORDS = ("a", "photo", "of", "the", "cat", "dog", "car", "red", "circle", "yellow", "star", "hexagon", "and", "in",
          "drawing", "wild", "green", "square", "purple", "cross", "white", "triangle")
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-()中文字符日本語猫狗车한국"


def tiny_wordpiece_tokenizer(**kwargs):
    """A lowercasing BERT WordPiece tokenizer on a few words, single characters and their
    ## continuations (ChineseCLIP, ALIGN)."""
    import transformers as t

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    for token in (*_WORDS, *_CHARS, *(f"##{c}" for c in _CHARS), "##s", "##ing"):
        vocab.setdefault(token, len(vocab))
    return t.BertTokenizer(vocab=vocab, model_max_length=TWO_TOWER_CONTEXT, **kwargs)


def tiny_unigram_tokenizer(**kwargs):
    """An XLM-RoBERTa SentencePiece-style Unigram tokenizer (AltCLIP, MetaCLIP 2): ▁words and
    single characters with log-probability scores."""
    import transformers as t

    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"▁{w}", -2.0 - 0.1 * i) for i, w in enumerate(_WORDS)]
    pieces += [("▁", -3.0)] + [(c, -5.0 - 0.01 * i) for i, c in enumerate(_CHARS)]
    pieces += [("<mask>", 0.0)]
    return t.XLMRobertaTokenizer(vocab=pieces, model_max_length=TWO_TOWER_CONTEXT, **kwargs)


def tiny_siglip_sentencepiece_tokenizer(folder: Path):
    """SigLIP's own tokenizer (SiglipTokenizer: SentencePiece, canonicalising captions in Python)
    on a small Unigram model trained here from a few captions; needs sentencepiece and protobuf."""
    import io

    import pytest

    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    import transformers as t

    corpus = ["a photo of a cat", "a photo of a dog", "a red circle and a yellow star", "a green square",
              "a purple cross in the wild", "a drawing of a car", "the quick brown fox jumps over the lazy dog",
              "café naïve résumé straße", "日本語のテキスト 中文字符", "numbers 1234567890", "a white triangle",
              "οδος σας σε"] * 20  # "σ" and the word-final "ς" as pieces of their own
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=80, model_type="unigram", pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", character_coverage=1.0,
        normalization_rule_name="nmt_nfkc", minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    return t.SiglipTokenizer(str(folder / "spiece.model"), model_max_length=TWO_TOWER_CONTEXT)


def tiny_two_tower_folder(kind: str, root: Path) -> Path:
    """A tiny seeded two-tower model of the real class, saved with its tokenizer and processor."""
    import torch
    import transformers as t

    from tests.text_fixtures import tiny_sentencepiece_tokenizer

    folder = Path(root) / kind
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2)
    # BERT / RoBERTa towers pool at CLS: a wide initialisation keeps the label captions apart
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, initializer_range=0.5)
    clip_processor = t.CLIPImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(0)
    if kind == "chinese-clip":
        tokenizer = tiny_wordpiece_tokenizer()
        config = t.ChineseCLIPConfig(text_config=dict(text, vocab_size=len(tokenizer), max_position_embeddings=64),
                                     vision_config=vision, projection_dim=16, logit_scale_init_value=math.log(100.0))
        model = t.ChineseCLIPModel(config)
        processor = t.ChineseCLIPImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    elif kind in ("metaclip-2", "altclip"):  # XLM-R tokenizers; MetaCLIP 2 pools at EOS, AltCLIP at CLS
        tokenizer = tiny_unigram_tokenizer()
        ids = dict(pad_token_id=tokenizer.pad_token_id)
        if kind == "metaclip-2":
            ids.update(max_position_embeddings=TWO_TOWER_CONTEXT, eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=tokenizer.bos_token_id)
        else:  # RoBERTa positions start after the pad id
            ids.update(max_position_embeddings=TWO_TOWER_CONTEXT + 2, project_dim=16)
        config_class, model_class = ((t.MetaClip2Config, t.MetaClip2Model) if kind == "metaclip-2"
                                     else (t.AltCLIPConfig, t.AltCLIPModel))
        model = model_class(config_class(text_config=dict(text, vocab_size=len(tokenizer), **ids), vision_config=vision,
                                         projection_dim=16, logit_scale_init_value=math.log(100.0)))
        processor = clip_processor
    elif kind == "align":
        tokenizer = tiny_wordpiece_tokenizer()
        config = t.AlignConfig(
            text_config=dict(text, vocab_size=len(tokenizer), max_position_embeddings=64),
            vision_config=dict(image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=16),
            projection_dim=80, temperature_init_value=0.05)  # = the width the EfficientNet tower pools to
        model = t.AlignModel(config)
        _keep_variance(model.vision_model, 32)
        processor = t.EfficientNetImageProcessorPil(size={"height": 32, "width": 32}, rescale_offset=True)
    elif kind == "siglip-sentencepiece":
        tokenizer = tiny_siglip_sentencepiece_tokenizer(Path(root) / "spiece")
        model, processor = tiny_siglip(dict(text, vocab_size=len(tokenizer), max_position_embeddings=TWO_TOWER_CONTEXT,
                                            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
                                       vision)
    elif kind in ("blip", "blip-itr"):  # BlipModel (CLIP-like projections), or retrieval's contrastive heads
        tokenizer = tiny_wordpiece_tokenizer()
        head = {"projection_dim": 16} if kind == "blip" else {"image_text_hidden_size": 16}
        config = t.BlipConfig(text_config=dict(text, vocab_size=len(tokenizer), max_position_embeddings=64),
                              vision_config=vision, **head)
        model = (t.BlipModel if kind == "blip" else t.BlipForImageTextRetrieval)(config)
        processor = t.BlipImageProcessorPil(size={"height": 32, "width": 32})
    elif kind == "clipseg":  # the real CLIP tokenizer; its processor is ViT's
        tokenizer = t.CLIPTokenizer.from_pretrained(_clip_tokenizer(Path(root)))
        config = t.CLIPSegConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                             bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id),
            vision_config=vision, projection_dim=16, logit_scale_init_value=math.log(100.0))
        model = t.CLIPSegModel(config)
        processor = t.ViTImageProcessorPil(size={"height": 32, "width": 32})
    elif kind == "blip2-itr":  # the Q-Former reads the vision tokens with 4 query tokens; no language model is built
        tokenizer = tiny_wordpiece_tokenizer()
        config = t.Blip2Config(vision_config=vision, num_query_tokens=4, image_text_hidden_size=16,
                               qformer_config=dict(text, vocab_size=len(tokenizer), max_position_embeddings=64,
                                                   encoder_hidden_size=vision["hidden_size"],
                                                   use_qformer_text_input=True))  # as blip2-itm-vit-g has
        model = t.Blip2ForImageTextRetrieval(config)
        processor = t.BlipImageProcessorPil(size={"height": 32, "width": 32})
    elif kind == "siglip2":
        tokenizer = tiny_sentencepiece_tokenizer("Siglip2Tokenizer", padding_side="right", add_eos_token=True,
                                                 model_max_length=TWO_TOWER_CONTEXT)
        model, processor = tiny_siglip(
            dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, max_position_embeddings=TWO_TOWER_CONTEXT, pad_token_id=tokenizer.pad_token_id,
                 eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id), NAFLEX_VISION, naflex=True)
    else:
        raise ValueError(kind)
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _keep_variance(model, size: int) -> None:
    """Variance-keeping conv and linear weights and batch-norm statistics of seeded noise
    images, so that a deep conv tower (ALIGN's EfficientNet) does not fade to zero features."""
    import torch

    images = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.weight.normal_(0, 1.0 / module.weight[0].numel() ** 0.5)
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # a cumulative average over the batch below
        model.train()(pixel_values=images)
    model.eval()

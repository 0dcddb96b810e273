"""Trains `builtin:shapes-clip`: a small real `transformers.CLIPModel` on generated shapes.

Everything the model needs is made here, from nothing downloaded:

* a CLIP-style byte-level BPE tokenizer (vocab.json + merges.txt in OpenAI CLIP's layout:
  256 byte symbols, the same 256 with ``</w>``, the learned merges, then
  ``<|startoftext|>`` and ``<|endoftext|>``), its merges learned with the ``tokenizers``
  BPE trainer on the caption words plus a few hundred common English words, so the caption
  words are single tokens and any other text falls back to byte-level pieces;
* a ``CLIPImageProcessor`` config (64 px, bicubic, OpenAI CLIP mean/std);
* a ``CLIPModel`` (ViT 64 px / patch 8 and a causal text transformer) trained contrastively
  on (image, caption) pairs drawn by ``shapes.render``.

Some (colour, shape) combinations (``HELD_OUT``) are never drawn during training, so the
zero-shot evaluation can report compositional generalisation on them separately.

Reproduce (9000 steps x 64 pairs; about 56 CPU-minutes, 31 min of wall clock on 2 threads
of a 2-core machine)::

    python exporters/builtin/train_shapes_clip.py --seed 0 --threads 2

The evaluation goes end to end through the saved folder with the Hugging Face classes
(``CLIPProcessor`` + ``CLIPModel``, softmax over ``logits_per_image``), and the results go
into ``MODEL_CARD.md`` beside the weights.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

try:  # installed package
    from vlmedge.exporters.builtin import bpe_tokenizer, shapes, zero_shot_eval
except ImportError:  # run from a checkout: the generator and the helpers sit beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bpe_tokenizer  # type: ignore[no-redef]
    import shapes  # type: ignore[no-redef]
    import zero_shot_eval  # type: ignore[no-redef]

SHAPES = tuple(shapes.SHAPES)
COLORS = tuple(shapes.COLORS)
SIZES = tuple(shapes.SIZES)
# (colour, shape) pairs never drawn in training, and the pairs that are: the evaluation's design
HELD_OUT = zero_shot_eval.HELD_OUT
train_pairs = zero_shot_eval.train_pairs

DEFAULT_OUT = Path(__file__).resolve().parent / "models" / "shapes-clip"
IMAGE_SIZE = 64
WIDTH = 96  # both towers; 4 heads of 24
PROJECTION_DIM = 64
CONTEXT_LENGTH = 77  # same context as OpenAI CLIP; captions here use ~8-12 tokens
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# --------------------------------------------------------------------------- captions
# Each template names some of the attributes; a caption "matches" every image whose
# attributes agree on the ones it names (used as multi-positive contrastive targets).
FULL_TEMPLATES = (
    "a {size} {color} {shape}",
    "a {size} {color} {shape}.",
    "a photo of a {size} {color} {shape}.",
    "a picture of a {size} {color} {shape}.",
    "an image of a {size} {color} {shape}.",
    "a drawing of a {size} {color} {shape}.",
    "the {size} {color} {shape}.",
    "a photo of the {size} {color} {shape}.",
    "{art_color} {color} {shape} that is {size}.",
    "a {size} {shape} that is {color}.",
    "there is a {size} {color} {shape} in the picture.",
    "a {size} {color} {shape} on a textured background.",
)
PARTIAL_TEMPLATES = (
    # shape only
    ("a photo of a {shape}.", ("shape",)),
    ("a picture of a {shape}.", ("shape",)),
    ("{art_shape} {shape}", ("shape",)),
    ("the {shape}.", ("shape",)),
    ("a photo of the {shape}.", ("shape",)),
    # colour only
    ("a photo of a {color} object.", ("color",)),
    ("a picture of a {color} shape.", ("color",)),
    ("something {color}.", ("color",)),
    ("{art_color} {color} thing", ("color",)),
    # size only
    ("a photo of a {size} object.", ("size",)),
    ("a {size} shape.", ("size",)),
    # two attributes
    ("a photo of {art_color} {color} {shape}.", ("color", "shape")),
    ("{art_color} {color} {shape}", ("color", "shape")),
    ("a photo of a {size} {shape}.", ("size", "shape")),
    ("a {size} {shape}", ("size", "shape")),
    ("a photo of a {size} {color} object.", ("size", "color")),
)
PARTIAL_PROB = 0.35


def caption_for(size: str, color: str, shape: str, rng: np.random.Generator):
    """One caption for the image and the attributes it names: (text, (size|None, color|None, shape|None))."""
    fields = dict(size=size, color=color, shape=shape, art_color=article(color), art_shape=article(shape))
    if rng.random() < PARTIAL_PROB:
        template, named = PARTIAL_TEMPLATES[rng.integers(len(PARTIAL_TEMPLATES))]
    else:
        template, named = FULL_TEMPLATES[rng.integers(len(FULL_TEMPLATES))], ("size", "color", "shape")
    spec = tuple(v if k in named else None for k, v in (("size", size), ("color", color), ("shape", shape)))
    return template.format(**fields), spec


# --------------------------------------------------------------------------- tokenizer corpus
# (the BPE itself, in OpenAI CLIP's file layout, is bpe_tokenizer.py)
EXTRA_WORDS = """
a an the of photo picture image drawing painting rendering sketch render illustration
shape shapes object objects thing things something one two three four five six seven eight
small large big tiny little huge medium size sized colour color colored coloured
is are this that there in on at with and or to it its of by for from as be not no
background texture textured noise noisy striped stripes checker checkered gradient blur blurry
dark light bright pale pink brown gray grey cyan magenta gold silver violet
rectangle oval ellipse pentagon octagon heart arrow line dot point polygon moon
left right top bottom center middle corner
close up view centered picture of plain simple solid outline filled hollow
dog cat car person tree house bird flower
""".split()


def tokenizer_corpus(rng: np.random.Generator) -> list[str]:
    """Text the BPE merges are learned from: every caption word, weighted, plus common words."""
    lines = []
    for _ in range(2000):
        s, c, sh = SIZES[rng.integers(2)], COLORS[rng.integers(8)], SHAPES[rng.integers(8)]
        lines.append(caption_for(s, c, sh, rng)[0])
    lines += [" ".join(SHAPES + COLORS + SIZES)] * 50
    lines += EXTRA_WORDS * 3
    return lines


# --------------------------------------------------------------------------- data
def preprocess(images) -> "torch.Tensor":
    """What CLIPImageProcessor does to a 64x64 RGB image (resize/crop are identities here)."""
    import torch

    x = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 255.0
    x = (x - np.array(OPENAI_CLIP_MEAN, np.float32)) / np.array(OPENAI_CLIP_STD, np.float32)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def sample_batch(rng: np.random.Generator, batch: int, pairs, colors_per_batch: int = 8):
    """A batch of (image, caption) pairs. With colors_per_batch < 8 the batch draws from a
    random subset of colours, so many pairs in it share a colour and differ in shape: the
    contrastive loss then has to separate shapes, not just colours (harder negatives)."""
    if colors_per_batch < len(COLORS):
        keep = set(rng.choice(len(COLORS), size=colors_per_batch, replace=False).tolist())
        pairs = [p for p in pairs if COLORS.index(p[0]) in keep]
    images, texts, attrs, specs, tokens = [], [], [], [], []
    for _ in range(batch):
        color, shape = pairs[rng.integers(len(pairs))]
        size = SIZES[rng.integers(len(SIZES))]
        image, token = render_with_tokens(shape, color, size, rng)
        images.append(image)
        tokens.append(token)
        text, spec = caption_for(size, color, shape, rng)
        texts.append(text)
        attrs.append((size, color, shape))
        specs.append(spec)
    return images, texts, attrs, specs, np.stack(tokens)


PATCH = 8
BACKGROUND = len(SHAPES)  # token label of patches the shape barely covers
TOKEN_COVER = 0.15


def render_with_tokens(shape: str, color: str, size: str, rng: np.random.Generator):
    """shapes.render's image, bit for bit, plus per-patch labels (grid x grid): the shape's
    index where it covers >= TOKEN_COVER of the patch, else BACKGROUND. The geometry is
    caught by wrapping shapes.draw_shape while render runs."""
    from PIL import Image, ImageDraw

    drawn = []
    original = shapes.draw_shape

    def spy(draw, *a, **k):
        drawn.append((a, k))
        return original(draw, *a, **k)

    shapes.draw_shape = spy
    try:
        image = shapes.render(shape, color, size, rng, IMAGE_SIZE)
    finally:
        shapes.draw_shape = original
    assert len(drawn) == 1, "shapes.render no longer draws through shapes.draw_shape once"
    a, k = drawn[0]
    a = list(a)
    a[4] = 255  # fill
    mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    original(ImageDraw.Draw(mask), *a, **k)
    grid = IMAGE_SIZE // PATCH
    cover = (np.asarray(mask, np.float32) / 255).reshape(grid, PATCH, grid, PATCH).mean((1, 3))
    return image, np.where(cover >= TOKEN_COVER, SHAPES.index(shape), BACKGROUND).astype(np.int64)


def match_matrix(attrs, specs) -> "torch.Tensor":
    """M[i, j] = 1 when caption j describes image i (agrees on every attribute it names)."""
    import torch

    a = np.array(attrs, dtype=object)
    m = np.ones((len(attrs), len(specs)), dtype=np.float32)
    for k in range(3):
        named = np.array([s[k] is not None for s in specs])
        vals = np.array([s[k] if s[k] is not None else "" for s in specs], dtype=object)
        eq = a[:, k][:, None] == vals[None, :]
        m *= np.where(named[None, :], eq, True).astype(np.float32)
    return torch.from_numpy(m)


# --------------------------------------------------------------------------- model
def make_config(vocab_size: int, bos_id: int, eos_id: int, vision_width: int = WIDTH, text_width: int = WIDTH):
    from transformers import CLIPConfig

    text = dict(
        vocab_size=vocab_size,
        hidden_size=text_width,
        intermediate_size=4 * text_width,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT_LENGTH,
        hidden_act="quick_gelu",
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    vision = dict(
        image_size=IMAGE_SIZE,
        patch_size=8,
        num_channels=3,
        hidden_size=vision_width,
        intermediate_size=4 * vision_width,
        num_hidden_layers=4,
        num_attention_heads=4,
        hidden_act="quick_gelu",
    )
    # projection_dim also in the sub-configs, so CLIPTextModelWithProjection /
    # CLIPVisionModelWithProjection.from_pretrained(folder) build the same projections.
    text["projection_dim"] = vision["projection_dim"] = PROJECTION_DIM
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION_DIM, logit_scale_init_value=2.6592)


def sincos_positions(hidden: int, grid: int) -> np.ndarray:
    """2-D sine-cosine position table (MAE style) with a zero row for CLS: (1 + grid*grid, hidden)."""
    gy, gx = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def embed(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2) / (dim / 2))
        angles = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], 1)

    table = np.concatenate([embed(hidden // 2, gy), embed(hidden // 2, gx)], 1)
    return np.concatenate([np.zeros((1, hidden)), table], 0).astype(np.float32)


def init_vision_tower(model, seed: int) -> None:
    """Initialisations that help a small ViT learn shapes from little compute; the weights
    stay an ordinary CLIPModel's (all trainable, nothing extra saved):

    * 2-D sine-cosine position embeddings instead of random ones;
    * mimetic attention init (Trockman & Kolter, 2023): per head W_q^T W_k ~ 0.7 Z + 0.7 I and
      W_o W_v ~ 0.4 Z - 0.4 I with Z ~ N(0, 1/d), so attention starts out local, as it ends
      up in trained ViTs.
    """
    import torch

    vision = model.vision_model
    cfg = vision.config
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    r = h // heads
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        pe = sincos_positions(h, cfg.image_size // cfg.patch_size)
        vision.embeddings.position_embedding.weight.copy_(torch.from_numpy(pe))
        for layer in vision.encoder.layers:
            attn = layer.self_attn
            for head in range(heads):
                m = 0.7 * torch.randn(h, h, generator=gen) / h**0.5 + 0.7 * torch.eye(h)
                u, sv, vh = torch.linalg.svd(m)
                attn.q_proj.weight[head * r : (head + 1) * r] = (u[:, :r] * sv[:r].sqrt()).T
                attn.k_proj.weight[head * r : (head + 1) * r] = (vh.T[:, :r] * sv[:r].sqrt()).T
            m = 0.4 * torch.randn(h, h, generator=gen) / h**0.5 - 0.4 * torch.eye(h)
            u, sv, vh = torch.linalg.svd(m)
            attn.v_proj.weight.copy_(sv.sqrt()[:, None] * vh)
            attn.out_proj.weight.copy_(u * sv.sqrt())


def unseen_negatives(attrs, specs) -> "torch.Tensor":
    """U[i, j] = True where caption j names a shape (colour) but not a colour (shape) and image
    i's colour (shape) makes a HELD_OUT pair with it. Image i is then a negative for caption j
    only because that pair is never drawn; left in, such negatives teach "circle" to mean
    "not red" when (red, circle) is held out. They are dropped from the loss."""
    import torch

    held = set(HELD_OUT)
    u = np.zeros((len(attrs), len(specs)), dtype=bool)
    for j, (_, c, sh) in enumerate(specs):
        if (c is None) == (sh is None):
            continue
        for i, (_, ic, ish) in enumerate(attrs):
            u[i, j] = ((ic, sh) in held) if c is None else ((c, ish) in held)
    return torch.from_numpy(u)


def contrastive_loss(logits_per_image, match, drop=None):
    """CLIP's symmetric cross-entropy, with every matching caption/image a positive and the
    pairs in `drop` left out of both softmaxes."""
    import torch.nn.functional as F

    if drop is not None:
        logits_per_image = logits_per_image.masked_fill(drop, float("-inf"))
    t_i = match / match.sum(1, keepdim=True)
    t_t = match.t() / match.t().sum(1, keepdim=True)
    li = -(t_i * F.log_softmax(logits_per_image, 1).clamp_min(-1e4)).sum(1).mean()
    lt = -(t_t * F.log_softmax(logits_per_image.t(), 1).clamp_min(-1e4)).sum(1).mean()
    return (li + lt) / 2


# --------------------------------------------------------------------------- main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--steps", type=int, default=9000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1, help="1 is faster than 2 on a shared, busy 2-core box")
    p.add_argument("--colors-per-batch", type=int, default=4)
    p.add_argument("--drop-unseen-negatives", type=int, default=1, help="1: leave negatives that exist only because of HELD_OUT out of the loss")
    p.add_argument("--token-loss", type=float, default=0.5, help="weight of the training-only token-labelling loss (0: off)")
    p.add_argument("--vision-width", type=int, default=WIDTH)
    p.add_argument("--text-width", type=int, default=WIDTH)
    p.add_argument("--vision-init", choices=("mimetic", "default"), default="mimetic")
    p.add_argument("--eval-every", type=int, default=0, help="quick in-training shape/colour check every N steps (0: off)")
    p.add_argument("--eval-seen", type=int, default=1024)
    p.add_argument("--eval-held", type=int, default=512)
    args = p.parse_args(argv)

    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    # tokenizer ---------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        corpus = tokenizer_corpus(np.random.default_rng(args.seed))
        vocab_file, merges_file = bpe_tokenizer.build_tokenizer_files(Path(tmp), corpus)
        tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=CONTEXT_LENGTH)
        raw_vocab, raw_merges = vocab_file.read_text(encoding="utf-8"), merges_file.read_text(encoding="utf-8")
    for word in SHAPES + COLORS + SIZES + ("a", "photo", "of", "the", "an", "picture", "object"):
        assert len(tokenizer.tokenize(word)) == 1, (word, tokenizer.tokenize(word))
    assert tokenizer.unk_token_id not in tokenizer("Ünïcödé ✓ 123 — ok?")["input_ids"][1:-1]
    image_processor = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        resample=3,  # bicubic
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)

    # model -------------------------------------------------------------------
    config = make_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, args.vision_width, args.text_width)
    model = CLIPModel(config)
    if args.vision_init == "mimetic":
        init_vision_tower(model, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"vocab {len(tokenizer)}  params {n_params / 1e6:.2f} M", flush=True)

    # Token labelling (Jiang et al., 2021), training only: a linear head on the vision patch
    # tokens predicts which shape (or background) each patch shows. It speeds up how fast the
    # small ViT learns shapes; it is not part of the saved CLIPModel.
    token_head = torch.nn.Linear(config.vision_config.hidden_size, len(SHAPES) + 1)
    named = list(model.named_parameters()) + [("token_head." + n, q) for n, q in token_head.named_parameters()]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    rng = np.random.default_rng(args.seed)
    pairs = train_pairs()
    quick_examples = zero_shot_eval.eval_images(args.seed + 20_000, 192, 96, IMAGE_SIZE) if args.eval_every else None
    model.train()
    t_train, cpu_train = time.time(), time.process_time()
    ema = None
    for step in range(args.steps):
        images, texts, attrs, specs, tokens = sample_batch(rng, args.batch, pairs, args.colors_per_batch)
        pixel_values = preprocess(images)
        text_inputs = tokenizer(texts, padding=True, return_tensors="pt")
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out_ = model(pixel_values=pixel_values, **text_inputs, output_hidden_states=False)
        drop = unseen_negatives(attrs, specs) if args.drop_unseen_negatives else None
        loss = contrastive_loss(out_.logits_per_image, match_matrix(attrs, specs), drop)
        if args.token_loss:
            patches = out_.vision_model_output.last_hidden_state[:, 1:]
            token_logits = token_head(patches)
            loss = loss + args.token_loss * torch.nn.functional.cross_entropy(
                token_logits.flatten(0, 1), torch.from_numpy(tokens).flatten()
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if args.eval_every and (step + 1) % args.eval_every == 0:
            model.eval()
            quick = zero_shot_eval.quick_eval(model, tokenizer, quick_examples, preprocess)
            model.train()
            print(f"step {step + 1:5d}  quick  " + "  ".join(f"{k} {v:.3f}" for k, v in quick.items()), flush=True)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {ema:.4f}  scale {model.logit_scale.exp().item():.1f}  lr {lr_at(step):.2e}  {time.time() - t_train:.0f}s", flush=True)
    train_s, train_cpu_s = time.time() - t_train, time.process_time() - cpu_train

    # save --------------------------------------------------------------------
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)  # transformers 5: processor_config.json + tokenizer files
    image_processor.save_pretrained(out)  # preprocessor_config.json, what transformers 4 looks for
    (out / "vocab.json").write_text(raw_vocab, encoding="utf-8")  # OpenAI-layout originals
    (out / "merges.txt").write_text(raw_merges, encoding="utf-8")

    # evaluate through the saved folder ----------------------------------------
    t_eval = time.time()
    examples = zero_shot_eval.eval_images(args.seed + 10_000, args.eval_seen, args.eval_held, IMAGE_SIZE)
    results = zero_shot_eval.zero_shot(out, examples)
    eval_s = time.time() - t_eval
    total_s = time.time() - t_start
    for k, v in results.items():
        print(f"{k:8s} {v['classes']:3d}-way  all-64 {v['uniform']:.3f}  seen {v['seen']:.3f}  held-out {v['held_out']:.3f}  (chance {v['chance']:.3f})")

    timing = dict(train_s=train_s, train_cpu_s=train_cpu_s, eval_s=eval_s, total_s=total_s)
    captions = (FULL_TEMPLATES, PARTIAL_TEMPLATES, PARTIAL_PROB)
    zero_shot_eval.write_card(out, args, config, tokenizer, n_params, model.logit_scale.exp().item(), results, timing, captions)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"saved {out} ({size / 1e6:.2f} MB)  train {train_s:.0f}s  total {total_s:.0f}s")


if __name__ == "__main__":
    main()

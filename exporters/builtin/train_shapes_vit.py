"""Trains the built-in image classifier ``builtin:shapes-vit``.

A small, real Hugging Face ``ViTForImageClassification`` learns to name the shape
(one of ``shapes.SHAPES``) in 64x64 images drawn by ``shapes.random_example``.
Everything is seeded, so the same command reproduces the same model (up to the
floating-point non-determinism of different CPUs / thread counts).

The folder written (default ``exporters/builtin/models/shapes-vit/``) is a normal
Hugging Face model folder::

    config.json                 ViTConfig with id2label / label2id = the shape names
    model.safetensors           the weights
    preprocessor_config.json    ViTImageProcessor: resize 64x64 bilinear, /255, mean=std=0.5
    MODEL_CARD.md               config, data, recipe, command, wall time, held-out accuracy

Run from the repository root::

    .venv/bin/python exporters/builtin/train_shapes_vit.py            # defaults
    python -m vlmedge.exporters.builtin.train_shapes_vit --out DIR    # once installed

The held-out accuracy in the model card is measured the honest way: the saved folder
is loaded back with ``ViTForImageClassification.from_pretrained`` and
``AutoImageProcessor.from_pretrained`` and fed PIL images drawn with ``HELDOUT_SEED``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

try:  # installed: exporters/ is vlmedge.exporters
    from vlmedge.exporters.builtin import shapes
except ImportError:  # running from a checkout: the generator sits beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import shapes  # type: ignore[no-redef]

IMAGE_SIZE = 64
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
# The held-out set is always drawn from this seed (tests/test_builtin_shapes_vit.py uses
# its first 200 images); training data is drawn from --seed, which must differ.
HELDOUT_SEED = 20_000_101
DEFAULT_OUT = Path(__file__).resolve().parent / "models" / "shapes-vit"
MODEL_ID = "builtin:shapes-vit"


# --------------------------------------------------------------------------- data


def generate(n: int, seed: int, image_size: int = IMAGE_SIZE, with_meta: bool = False):
    """Draws n examples from one seeded Generator: uint8 images (n, H, W, 3) and shape labels."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    meta = []
    for i in range(n):
        img, shape, color, size = shapes.random_example(rng, image_size)
        images[i] = np.asarray(img, dtype=np.uint8)
        labels[i] = shapes.SHAPES.index(shape)
        meta.append((color, size))
    return (images, labels, meta) if with_meta else (images, labels)


def preprocess(images_u8: np.ndarray) -> np.ndarray:
    """numpy twin of the saved ViTImageProcessor for 64x64 RGB input.

    The processor resizes to 64x64 (bilinear; the identity for images already that
    size), rescales by 1/255 and normalises with mean = std = 0.5, then goes to NCHW.
    """
    assert images_u8.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3), images_u8.shape
    x = images_u8.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def augment(x, gen):
    """Random element of the dihedral group per image (flips + 90-degree turns).

    Every shape class is closed under these (the generator draws random rotations,
    and a diamond turned 90 degrees is still a diamond), so labels are unchanged.
    """
    import torch

    n = x.shape[0]
    flips = torch.rand(n, 3, generator=gen) < 0.5
    x = torch.where(flips[:, 0, None, None, None], x.flip(-1), x)
    x = torch.where(flips[:, 1, None, None, None], x.flip(-2), x)
    x = torch.where(flips[:, 2, None, None, None], x.transpose(-1, -2), x)
    return x


# --------------------------------------------------------------------------- model


def build_model(args):
    from transformers import ViTConfig, ViTForImageClassification

    id2label = {i: name for i, name in enumerate(shapes.SHAPES)}
    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=args.patch_size,
        num_channels=3,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.hidden_size * args.mlp_ratio,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        qkv_bias=True,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
    )
    return ViTForImageClassification(config)


def image_processor():
    try:  # transformers >= 5 names the Pillow backend explicitly; same saved config
        from transformers import ViTImageProcessorPil as cls
    except ImportError:
        from transformers import ViTImageProcessor as cls
    return cls(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=2,  # PIL.Image.BILINEAR
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(MEAN),
        image_std=list(STD),
    )


@np.errstate(all="ignore")
def quick_accuracy(model, x_u8, y, batch=500):
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(y), batch):
            logits = model(pixel_values=torch.from_numpy(preprocess(x_u8[i : i + batch]))).logits
            correct += int((logits.argmax(-1).numpy() == y[i : i + batch]).sum())
    model.train()
    return correct / len(y)


def evaluate_saved(out: Path, n: int, seed: int, batch: int = 250):
    """Held-out accuracy through the plain HF path: from_pretrained + image processor + PIL."""
    import torch
    from transformers import AutoImageProcessor, ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    rng = np.random.default_rng(seed)
    examples = [shapes.random_example(rng, IMAGE_SIZE) for _ in range(n)]
    preds = []
    with torch.inference_mode():
        for i in range(0, n, batch):
            imgs = [e[0] for e in examples[i : i + batch]]
            pixel_values = processor(images=imgs, return_tensors="pt")["pixel_values"]
            logits = model(pixel_values=pixel_values).logits
            preds += [model.config.id2label[int(k)] for k in logits.argmax(-1)]
    truth = [e[1] for e in examples]
    sizes = [e[3] for e in examples]
    ok = np.array([p == t for p, t in zip(preds, truth)])
    per_class = {
        s: (int(ok[[t == s for t in truth]].sum()), int(sum(t == s for t in truth))) for s in shapes.SHAPES
    }
    per_size = {z: (int(ok[[x == z for x in sizes]].sum()), int(sum(x == z for x in sizes))) for z in shapes.SIZES}
    confusion = np.zeros((len(shapes.SHAPES),) * 2, dtype=int)
    for p, t in zip(preds, truth):
        confusion[shapes.SHAPES.index(t), shapes.SHAPES.index(p)] += 1
    return {
        "accuracy": float(ok.mean()),
        "n": n,
        "per_class": per_class,
        "per_size": per_size,
        "confusion": confusion.tolist(),
    }


# --------------------------------------------------------------------------- training


def train(args) -> dict:
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    np_rng = np.random.default_rng([args.seed, 1])  # batch order

    t0 = time.time()
    x_train, y_train = generate(args.train_size, args.seed)
    x_val, y_val = generate(args.heldout_size, HELDOUT_SEED)
    t_data = time.time() - t0
    print(f"data: {args.train_size} train (seed {args.seed}) + {args.heldout_size} held-out "
          f"(seed {HELDOUT_SEED}) in {t_data:.0f}s", flush=True)

    model = build_model(args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: ViTForImageClassification, {n_params:,} parameters", flush=True)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "position_embeddings" in name or "cls_token" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.999),
    )
    steps_per_epoch = args.train_size // args.batch_size
    total = steps_per_epoch * args.epochs
    warmup = max(1, int(total * args.warmup))

    def lr_lambda(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    history = []
    model.train()
    t_train = time.time()
    for epoch in range(args.epochs):
        order = np_rng.permutation(args.train_size)
        run_loss, run_ok, seen = 0.0, 0, 0
        t_epoch = time.time()
        for s in range(steps_per_epoch):
            idx = np.sort(order[s * args.batch_size : (s + 1) * args.batch_size])
            x = torch.from_numpy(preprocess(x_train[idx]))
            y = torch.from_numpy(y_train[idx])
            if args.augment:
                x = augment(x, gen)
            logits = model(pixel_values=x).logits
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            run_loss += float(loss.detach()) * len(y)
            run_ok += int((logits.argmax(-1) == y).sum())
            seen += len(y)
            if args.log_every and (s + 1) % args.log_every == 0:
                rate = seen / (time.time() - t_epoch)
                print(f"  epoch {epoch + 1} step {s + 1}/{steps_per_epoch} loss {run_loss / seen:.4f} "
                      f"acc {run_ok / seen:.4f} lr {scheduler.get_last_lr()[0]:.2e} {rate:.0f} img/s", flush=True)
        val = quick_accuracy(model, x_val, y_val)
        row = {
            "epoch": epoch + 1,
            "loss": round(run_loss / seen, 4),
            "train_acc": round(run_ok / seen, 4),
            "heldout_acc": round(val, 4),
            "elapsed_s": round(time.time() - t0),
        }
        history.append(row)
        print(json.dumps(row), flush=True)
    t_train = time.time() - t_train
    return {
        "model": model,
        "n_params": n_params,
        "history": history,
        "data_s": t_data,
        "train_s": t_train,
        "steps": total,
    }


# --------------------------------------------------------------------------- card


def model_card(args, result, metrics, wall_s, command, out: Path) -> str:
    cfg = result["model"].config
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.name != "MODEL_CARD.md"}
    lines = [
        f"# {MODEL_ID}",
        "",
        "A small Hugging Face `ViTForImageClassification` trained from scratch by vlmedge on",
        "generated images of coloured shapes. It names the shape in a 64x64 RGB image, one of",
        f"{len(shapes.SHAPES)} classes: {', '.join(f'`{s}`' for s in shapes.SHAPES)}.",
        "It exists so that the exporters, parity checks, runtimes and benchmarks have a real",
        "transformer classifier with known, checkable accuracy that ships inside the repository",
        "and needs no model hub.",
        "",
        "## Held-out accuracy",
        "",
        f"**{metrics['accuracy'] * 100:.2f}%** on {metrics['n']} held-out images "
        f"(`shapes.random_example`, seed `{HELDOUT_SEED}`, never seen in training), measured by "
        "loading this folder with `ViTForImageClassification.from_pretrained` and "
        "`AutoImageProcessor.from_pretrained` and feeding PIL images.",
        "",
        "| class | correct | images | accuracy |",
        "|---|---:|---:|---:|",
    ]
    for name, (ok, n) in metrics["per_class"].items():
        lines.append(f"| {name} | {ok} | {n} | {ok / max(n, 1) * 100:.1f}% |")
    lines += ["", "By drawn size (`shapes.SIZES`):", "", "| size | correct | images | accuracy |", "|---|---:|---:|---:|"]
    for name, (ok, n) in metrics["per_size"].items():
        lines.append(f"| {name} | {ok} | {n} | {ok / max(n, 1) * 100:.1f}% |")
    lines += ["", "Confusion matrix (rows = truth, columns = prediction):", ""]
    lines.append("| | " + " | ".join(s[:4] for s in shapes.SHAPES) + " |")
    lines.append("|---|" + "---:|" * len(shapes.SHAPES))
    for name, row in zip(shapes.SHAPES, metrics["confusion"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += [
        "",
        "## Architecture",
        "",
        f"`transformers.ViTForImageClassification`, {result['n_params']:,} parameters (float32):",
        "",
        f"- image_size {cfg.image_size}, patch_size {cfg.patch_size} "
        f"({(cfg.image_size // cfg.patch_size) ** 2} patches + CLS token), 3 channels",
        f"- hidden_size {cfg.hidden_size}, {cfg.num_hidden_layers} layers, {cfg.num_attention_heads} heads, "
        f"intermediate_size {cfg.intermediate_size}, GELU, layer_norm_eps {cfg.layer_norm_eps}",
        "- dropout 0, qkv_bias true; classifier = linear head on the final CLS token",
        f"- id2label: {json.dumps({int(k): v for k, v in cfg.id2label.items()})}",
        "",
        "Preprocessing (`preprocessor_config.json`, a `ViTImageProcessor`): convert to RGB, resize to",
        "64x64 bilinear, rescale by 1/255, normalise with mean = std = (0.5, 0.5, 0.5), NCHW float32.",
        "",
        "## Data",
        "",
        "`exporters/builtin/shapes.py` (`vlmedge.exporters.builtin.shapes`), `random_example(rng, 64)`:",
        "a shape of random class, colour (8 colours, jittered), size (small: radius 22-32% of half the",
        "image, large: 55-75%), position and rotation on a random textured background (noise, stripes,",
        "gradient or checker), blurred 30% of the time. Label = shape.",
        "",
        f"- training: {args.train_size} images from `np.random.default_rng({args.seed})`, drawn in order",
        f"- held-out: {metrics['n']} images from `np.random.default_rng({HELDOUT_SEED})`, drawn in order",
        "  (`tests/test_builtin_shapes_vit.py` re-checks the first 200)",
        "",
        "## Training recipe",
        "",
        f"- {args.epochs} epochs x {args.train_size // args.batch_size} steps, batch {args.batch_size} "
        f"({result['steps']} steps); shuffled with `np.random.default_rng([{args.seed}, 1])`",
        f"- AdamW lr {args.lr}, betas (0.9, 0.999), weight decay {args.weight_decay} "
        "(none on biases, LayerNorms, position embeddings, CLS token); gradient clipping at 1.0",
        f"- linear warm-up over the first {args.warmup * 100:.0f}% of steps, then cosine decay to 0",
        f"- cross-entropy with label smoothing {args.label_smoothing}",
        "- augmentation: "
        + ("a random flip / 90-degree turn (one of the 8 dihedral symmetries) per image" if args.augment else "none"),
        f"- `torch.manual_seed({args.seed})`, `torch.set_num_threads({args.threads})`, CPU float32",
        "",
        "Held-out accuracy after each epoch (in-training fast path, same preprocessing):",
        "",
        "| epoch | train loss | train acc | held-out acc | elapsed |",
        "|---:|---:|---:|---:|---:|",
    ]
    for h in result["history"]:
        lines.append(
            f"| {h['epoch']} | {h['loss']:.4f} | {h['train_acc'] * 100:.2f}% | {h['heldout_acc'] * 100:.2f}% | {h['elapsed_s']}s |"
        )
    lines += [
        "",
        "## Reproduce",
        "",
        "From the repository root:",
        "",
        "```",
        command,
        "```",
        "",
        f"Wall time: {wall_s / 60:.1f} min in all ({result['data_s']:.0f}s generating data, "
        f"{result['train_s'] / 60:.1f} min training, the rest saving and evaluating), on "
        f"{args.threads} CPU threads ({platform.machine()}, {platform.system()}), "
        f"torch {_version('torch')}, transformers {_version('transformers')}, numpy {np.__version__}, "
        f"Pillow {_version('PIL')}. The seeds fix data, initialisation, batch order and augmentation;",
        "a different CPU or thread count can change the last bits of the float arithmetic and so the",
        "weights slightly, not the accuracy materially.",
        "",
        "## Files",
        "",
        "| file | bytes |",
        "|---|---:|",
    ]
    for name, size in files.items():
        lines.append(f"| {name} | {size:,} |")
    lines += [
        "",
        "## Limitations",
        "",
        "Trained only on this generator's images: one shape per image, 64x64, these 8 classes.",
        "It is a test fixture and a worked example, not a general shape recogniser.",
        "",
    ]
    return "\n".join(lines)


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # pragma: no cover
        return "?"


def _command(args, defaults) -> str:
    parts = [".venv/bin/python", "exporters/builtin/train_shapes_vit.py"]
    for key, value in vars(args).items():
        if key in ("out", "log_every"):
            continue
        if value != defaults[key]:
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                parts.append(flag if value else "--no-" + key.replace("_", "-"))
            else:
                parts += [flag, str(value)]
    try:
        out = os.path.relpath(Path(args.out).resolve(), Path.cwd())
    except ValueError:
        out = str(args.out)
    if Path(args.out).resolve() != DEFAULT_OUT:
        parts += ["--out", out]
    return " ".join(shlex.quote(p) for p in parts)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="seed of the training data, init, order, augmentation")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write the model to")
    p.add_argument("--train-size", type=int, default=40_000)
    p.add_argument("--heldout-size", type=int, default=2_000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=float, default=0.05, help="fraction of steps")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp-ratio", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50, help="steps between progress lines (0: off)")
    args = p.parse_args(argv)
    if args.seed == HELDOUT_SEED:
        p.error(f"--seed must differ from the held-out seed {HELDOUT_SEED}")
    return args, {a.dest: a.default for a in p._actions if a.dest != "help"}


def main(argv=None) -> int:
    t0 = time.time()
    args, defaults = parse_args(argv)
    out = Path(args.out)
    result = train(args)
    model = result["model"].eval()

    out.mkdir(parents=True, exist_ok=True)
    for stale in ("model.safetensors", "pytorch_model.bin", "config.json", "preprocessor_config.json", "MODEL_CARD.md"):
        (out / stale).unlink(missing_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    image_processor().save_pretrained(out)
    for f in out.iterdir():
        f.chmod(0o644)

    metrics = evaluate_saved(out, args.heldout_size, HELDOUT_SEED)
    wall = time.time() - t0
    command = _command(args, defaults)
    (out / "MODEL_CARD.md").write_text(model_card(args, result, metrics, wall, command, out), encoding="utf-8")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(json.dumps({
        "heldout_accuracy": metrics["accuracy"],
        "per_class": {k: round(a / n, 4) for k, (a, n) in metrics["per_class"].items()},
        "wall_s": round(wall),
        "out": str(out),
        "bytes": total,
        "command": command,
    }, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

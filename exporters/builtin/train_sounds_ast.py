"""Train the built-in audio tagger ``builtin:sounds-ast``.

A small Hugging Face ``ASTForAudioClassification`` (Audio Spectrogram Transformer) trained
from scratch on the generated clips of :mod:`sounds` (ten classes of synthetic sounds).
Features come from a real ``ASTFeatureExtractor`` whose mean/std are the statistics of
the training set's log-mel filterbank features, as the AST authors do for each dataset.

Training clips are half plain 16 kHz clips, half ``sounds.recording`` clips (other sample rates,
stereo, gain, a quieter second sound) brought to 16 kHz mono by vlmedge's own downmix and
resampler, so that files as users have them (the bundled 22.05 kHz stereo FLAC, 8 kHz WAV) are
tagged as well as the generated clips.

Reproduce (from the repository root; 15.3 minutes (916 s) on 2 busy, shared CPU cores with one
torch thread: 182 s to generate the 11,000 clips, 130 s to extract features, 545 s to train
12 epochs, the rest saving and evaluating)::

    python exporters/builtin/train_sounds_ast.py --seed 0 --out exporters/builtin/models/sounds-ast

Writes model.safetensors + config.json (save_pretrained), preprocessor_config.json and
MODEL_CARD.md into ``--out``. The held-out accuracy in the card is measured end-to-end
through the saved folder (``from_pretrained`` of both extractor and model).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

try:  # installed package
    from vlmedge.exporters.builtin import sounds
except ImportError:  # running from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sounds  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "models" / "sounds-ast"

SAMPLE_RATE = 16000
NUM_MEL_BINS = 64
MAX_LENGTH = 128  # frames of 10 ms: 1.28 s
HELD_OUT_SEED_OFFSET = 10_000  # held-out clips use numpy seed (seed + 10000)

MODEL_KW = dict(
    hidden_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=384,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    patch_size=16,
    frequency_stride=16,
    time_stride=16,
    max_length=MAX_LENGTH,
    num_mel_bins=NUM_MEL_BINS,
)


def held_out_seed(seed: int) -> int:
    return seed + HELD_OUT_SEED_OFFSET


def to_model_input(wave: np.ndarray, rate: int) -> np.ndarray:
    """What the runtime feeds the model from a (samples[, channels]) array at ``rate``: the
    channels' mean, resampled to 16 kHz by vlmedge's own resampler (soxr HQ)."""
    from vlmedge.preprocess.audio import load_audio, resample

    mono, rate = load_audio(wave, sample_rate=rate)
    return resample(mono, rate, SAMPLE_RATE)


def make_clips(seed: int, n: int, recorded_frac: float = 0.0) -> tuple[list[np.ndarray], np.ndarray]:
    """n clips with balanced classes (each class n // 10 or so times, shuffled), as 16 kHz mono.

    A fraction ``recorded_frac`` of them are ``sounds.recording`` clips (another sample rate,
    stereo, gain, a quieter second sound) brought to 16 kHz mono as the runtime does; the rest
    are plain ``sounds.synthesize`` clips at 16 kHz. ``recorded_frac=0`` draws exactly what
    it drew before the augmentation existed."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(sounds.CLASSES)
    rng.shuffle(labels)
    waves = []
    for i in labels:
        if recorded_frac > 0 and rng.random() < recorded_frac:
            waves.append(to_model_input(*sounds.recording(sounds.CLASSES[i], rng)))
        else:
            waves.append(sounds.synthesize(sounds.CLASSES[i], rng, SAMPLE_RATE))
    return waves, labels.astype(np.int64)


def held_out_clips(seed: int, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The held-out set: ``make_clips(seed + 10000, n)``. A different n gives a different (but equally
    held-out) set, since the label shuffle draws from the same generator first."""
    return make_clips(held_out_seed(seed), n)


def held_out_recorded_clips(seed: int, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The held-out set of recordings: ``make_clips(seed + 20000, n, recorded_frac=1)``."""
    return make_clips(held_out_seed(seed) + HELD_OUT_SEED_OFFSET, n, recorded_frac=1.0)


def extract(extractor, waves: list[np.ndarray], batch: int = 256) -> np.ndarray:
    out = []
    for i in range(0, len(waves), batch):
        feats = extractor(waves[i : i + batch], sampling_rate=SAMPLE_RATE, return_tensors="np")
        out.append(np.asarray(feats["input_values"], dtype=np.float32))
    return np.concatenate(out)


def fbank_stats(raw: np.ndarray, waves: list[np.ndarray]) -> tuple[float, float]:
    """Mean and std of the un-normalised log-mel features over the real (non-padded) frames."""
    vals = []
    for f, w in zip(raw, waves):
        n_frames = min(MAX_LENGTH, 1 + (len(w) - 400) // 160)
        vals.append(f[:n_frames].astype(np.float64).ravel())
    v = np.concatenate(vals)
    return float(v.mean()), float(v.std())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--recorded-frac", type=float, default=0.5,
                   help="fraction of training clips drawn as sounds.recording (augmentation)")
    p.add_argument("--eval-size", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-frac", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--feature-cache", type=Path, default=None,
                   help="optional .npz to store/reuse the precomputed features (for iterating)")
    args = p.parse_args(argv)

    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    classes = list(sounds.CLASSES)

    # ---- data: generate clips, extract raw fbank once, compute dataset mean/std -----------
    raw_fe = ASTFeatureExtractor(num_mel_bins=NUM_MEL_BINS, max_length=MAX_LENGTH,
                                 sampling_rate=SAMPLE_RATE, do_normalize=False)
    cache = args.feature_cache
    import hashlib

    src_hash = hashlib.sha256(Path(sounds.__file__).read_bytes()).hexdigest()[:16]
    key = (f"seed{args.seed}-n{args.train_size}-{args.eval_size}-rec{args.recorded_frac}-mel{NUM_MEL_BINS}"
           f"-len{MAX_LENGTH}-{src_hash}")
    if cache is not None and cache.exists() and str(np.load(cache)["key"]) == key:
        d = np.load(cache)
        x_tr_raw, y_tr, x_ev_raw, y_ev = d["x_tr"], d["y_tr"], d["x_ev"], d["y_ev"]
        mean, std = float(d["mean"]), float(d["std"])
        print(f"loaded features from {cache}", flush=True)
    else:
        t0 = time.time()
        w_tr, y_tr = make_clips(args.seed, args.train_size, args.recorded_frac)
        w_ev, y_ev = held_out_clips(args.seed, args.eval_size)
        print(f"generated {len(w_tr)}+{len(w_ev)} clips in {time.time() - t0:.1f}s", flush=True)
        t0 = time.time()
        x_tr_raw = extract(raw_fe, w_tr)
        x_ev_raw = extract(raw_fe, w_ev)
        mean, std = fbank_stats(x_tr_raw, w_tr)
        print(f"extracted features {x_tr_raw.shape} in {time.time() - t0:.1f}s; mean={mean:.4f} std={std:.4f}",
              flush=True)
        del w_tr, w_ev
        if cache is not None:
            np.savez(cache, key=key, x_tr=x_tr_raw, y_tr=y_tr, x_ev=x_ev_raw, y_ev=y_ev, mean=mean, std=std)
    extractor = ASTFeatureExtractor(num_mel_bins=NUM_MEL_BINS, max_length=MAX_LENGTH,
                                    sampling_rate=SAMPLE_RATE, mean=mean, std=std, do_normalize=True)
    # the extractor's own normalisation, applied to the precomputed raw features
    x_tr = torch.from_numpy(extractor.normalize(x_tr_raw).astype(np.float32))
    x_ev = torch.from_numpy(extractor.normalize(x_ev_raw).astype(np.float32))
    y_tr_t = torch.from_numpy(y_tr)
    y_ev_t = torch.from_numpy(y_ev)

    # ---- model ---------------------------------------------------------------------------
    config = ASTConfig(
        **MODEL_KW,
        num_labels=len(classes),
        id2label={i: c for i, c in enumerate(classes)},
        label2id={c: i for i, c in enumerate(classes)},
        problem_type="single_label_classification",
    )
    model = ASTForAudioClassification(config)
    n_params = sum(p.numel() for p in model.parameters())
    data_s = time.time() - t_start
    print(f"AST params: {n_params:,}", flush=True)

    decay, no_decay = [], []
    for name, prm in model.named_parameters():
        (no_decay if prm.ndim < 2 or "embeddings" in name else decay).append(prm)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    steps_per_epoch = math.ceil(len(x_tr) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warm = max(1, int(args.warmup_frac * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    gen = torch.Generator().manual_seed(args.seed)

    def evaluate(x: torch.Tensor, y: torch.Tensor) -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(x), 250):
                correct += int((model(input_values=x[i : i + 250]).logits.argmax(-1) == y[i : i + 250]).sum())
        model.train()
        return correct / len(x)

    t_train = time.time()
    log = []
    model.train()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(x_tr), generator=gen)
        tot_loss = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch_size : (s + 1) * args.batch_size]
            out = model(input_values=x_tr[idx], labels=y_tr_t[idx])
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot_loss += out.loss.item() * len(idx)
        line = f"epoch {epoch + 1:2d}/{args.epochs} loss {tot_loss / len(x_tr):.4f}"
        if (epoch + 1) % 4 == 0 or epoch + 1 == args.epochs:
            line += f" held-out acc {evaluate(x_ev, y_ev_t):.4f}"
        line += f" ({time.time() - t_train:.0f}s)"
        print(line, flush=True)
        log.append(line)
    train_s = time.time() - t_train

    # ---- save ------------------------------------------------------------------------------
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    extractor.save_pretrained(out_dir)
    for f in out_dir.iterdir():  # save_pretrained may create files 0600; ship them world-readable
        if f.is_file():
            f.chmod(0o644)

    # ---- end-to-end held-out evaluation through the saved folder ------------------------------
    fe2 = ASTFeatureExtractor.from_pretrained(out_dir)
    m2 = ASTForAudioClassification.from_pretrained(out_dir).eval()
    w_ev, y_ev2 = held_out_clips(args.seed, args.eval_size)
    assert np.array_equal(y_ev2, y_ev)

    def predict_saved(waves: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([
                m2(**fe2(waves[i : i + 250], sampling_rate=SAMPLE_RATE, return_tensors="pt")).logits.argmax(-1).numpy()
                for i in range(0, len(waves), 250)])

    preds = predict_saved(w_ev)
    acc = float((preds == y_ev).mean())
    per_class = {c: float((preds[y_ev == i] == i).mean()) for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for t, pr in zip(y_ev, preds):
        confusion[t, pr] += 1
    # the same through the saved folder on held-out recordings (other rates, stereo, gain, a second sound)
    w_rec, y_rec = held_out_recorded_clips(args.seed, args.eval_size)
    preds_rec = predict_saved(w_rec)
    acc_rec = float((preds_rec == y_rec).mean())
    per_class_rec = {c: float((preds_rec[y_rec == i] == i).mean()) for i, c in enumerate(classes)}
    # and the bundled sample files, read as the runtime reads them
    samples = {}
    sample_dir = HERE.parent / "sample_data" / "audio"
    from vlmedge.preprocess.audio import load_audio, resample

    for f in sorted(sample_dir.iterdir()):
        mono, rate = load_audio(f)
        feats = fe2([resample(mono, rate, SAMPLE_RATE)], sampling_rate=SAMPLE_RATE, return_tensors="pt")
        with torch.no_grad():
            prob = m2(**feats).logits.softmax(-1)[0]
        samples[f.name] = (classes[int(prob.argmax())], float(prob.max()))
    wall_s = time.time() - t_start
    print(f"end-to-end held-out accuracy {acc:.4f}, recordings {acc_rec:.4f}; wall {wall_s:.0f}s", flush=True)
    for c, a in per_class.items():
        print(f"  {c:12s} {a:.3f} {per_class_rec[c]:.3f}")
    for name, (label, score) in samples.items():
        print(f"  {name}: {label} {score:.3f}")

    sizes = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file() and p.name != "MODEL_CARD.md"}
    write_card(out_dir, args, config, n_params, mean, std, acc, per_class, confusion, classes,
               data_s, train_s, wall_s, log, sizes, acc_rec, per_class_rec, samples)
    return 0


def write_card(out_dir, args, config, n_params, mean, std, acc, per_class, confusion, classes,
               data_s, train_s, wall_s, log, sizes, acc_rec, per_class_rec, samples) -> None:
    import torch
    import transformers

    rel_out = os.path.relpath(out_dir, Path.cwd()) if str(out_dir).startswith(str(Path.cwd())) else str(out_dir)
    cfg = {k: getattr(config, k) for k in MODEL_KW}
    lines = [
        "# builtin:sounds-ast",
        "",
        "A small Audio Spectrogram Transformer (Hugging Face `ASTForAudioClassification`) trained from",
        "scratch by this project on generated sounds. Single-label audio tagging over ten classes",
        "of synthetic 16 kHz mono sounds. It is a test fixture for the export/serving pipeline (a real",
        "AST graph with real weights and a meaningful accuracy), not a general-purpose audio tagger.",
        "",
        "## Files",
        "",
        "| file | bytes |",
        "|---|---|",
        *[f"| `{k}` | {v:,} |" for k, v in sizes.items()],
        "",
        "## Architecture",
        "",
        f"`ASTForAudioClassification`, {n_params:,} parameters (float32), `problem_type=\"single_label_classification\"`",
        "(softmax over `id2label`).",
        "",
        "```json",
        json.dumps(cfg, indent=2),
        "```",
        "",
        f"Input `input_values`: float32 `[batch, {MAX_LENGTH}, {NUM_MEL_BINS}]` (frames x mel bins). Patch grid:"
        f" {(NUM_MEL_BINS - config.patch_size) // config.frequency_stride + 1} (frequency) x"
        f" {(MAX_LENGTH - config.patch_size) // config.time_stride + 1} (time) patches + CLS + distillation tokens.",
        "",
        f"Labels (`id2label`): {', '.join(f'{i}={c}' for i, c in enumerate(classes))}.",
        "",
        "## Features",
        "",
        f"`ASTFeatureExtractor(num_mel_bins={NUM_MEL_BINS}, max_length={MAX_LENGTH}, sampling_rate={SAMPLE_RATE},"
        f" mean={mean:.6f}, std={std:.6f})`:",
        "Kaldi-style log-mel filterbank, 25 ms window / 10 ms hop, padded or truncated to"
        f" {MAX_LENGTH} frames (1.28 s), normalised as `(x - mean) / (2 * std)`.",
        "`mean`/`std` are the statistics of the un-normalised log-mel features of the training clips",
        "(real frames only, padding excluded), as the AST authors compute per dataset.",
        "Without torchaudio installed the extractor uses its numpy implementation; that is what was used",
        "for training and evaluation here (it mirrors the torchaudio Kaldi fbank path closely).",
        "",
        "## Data",
        "",
        "`exporters/builtin/sounds.py` (numpy only): 1-2 s clips, random level (RMS 0.02-0.3), short random",
        "fades, coloured background noise 18-40 dB below the signal. Classes and randomised parameters:",
        "",
        "- `sine_tone`: 100-4800 Hz; `am_tone`: carrier 150-4000 Hz amplitude-modulated by a soft-edged square wave\n  (2-6 Hz, duty 40-60 %, 5-20 ms edges, depth 0.9-1.0)",
        "- `chirp_up` / `chirp_down`: linear or exponential sweep over a 2-12x range within 150-6400 Hz",
        "- `white_noise` / `pink_noise` / `brown_noise`: 1/f^0, 1/f^1, 1/f^2 power spectra",
        "- `click_train`: 0.5-3 ms decaying noise bursts at 3-30 Hz with +-10% jitter",
        "- `square_wave`: band-limited (odd harmonics below Nyquist), 80-1200 Hz",
        "- `silence`: low-level coloured noise only (RMS about 3e-5 to 3e-4)",
        "",
        "`am_tone` uses a square-wave modulator because with a sinusoidal one (3-16 Hz, or 1.5-4 Hz) this",
        "small AST stayed at chance between `sine_tone` and `am_tone` within the training budget (overall",
        "~0.92): in log-mel space a smooth level change is hard to tell from the random clip level and the",
        "background's frame-to-frame fluctuation, while the gate's on/off edges are local, visible patterns.",
        "",
        "Augmentation, so that files as users have them are tagged as well as the generated 16 kHz clips:",
        "`sounds.recording` synthesises a clip at a random rate of 8, 11.025, 12, 16, 22.05, 24, 32, 44.1 or",
        "48 kHz (16 kHz a third of the time), at a random gain (-10..+6 dB), stereo half the time, and with a",
        "second, quieter sound of another class (14-30 dB below, in one channel when stereo) 30 % of the time;",
        "the training script then averages the channels and resamples to 16 kHz with vlmedge's own resampler",
        "(soxr HQ), exactly as the runtime does. A clip recorded at 8 kHz thus reaches the model band-limited",
        "to 4 kHz, as `exporters/sample_data/audio/pink-noise-8k-24bit.wav` does.",
        "",
        f"Training set: `make_clips(seed={args.seed}, n={args.train_size}, recorded_frac={args.recorded_frac:g})`"
        f" (numpy `default_rng({args.seed})`, classes balanced and shuffled; a fraction {args.recorded_frac:g} of"
        " the clips are recordings, the rest plain 16 kHz clips).",
        f"Held-out sets, never used for training or model selection: `make_clips(seed={held_out_seed(args.seed)},"
        f" n={args.eval_size})` (plain 16 kHz clips) and `make_clips(seed={held_out_seed(args.seed) + HELD_OUT_SEED_OFFSET},"
        f" n={args.eval_size}, recorded_frac=1)` (all recordings).",
        "",
        "## Recipe",
        "",
        f"AdamW (lr {args.lr:g}, betas (0.9, 0.98), weight decay {args.weight_decay:g} on matrices only),"
        f" batch {args.batch_size}, {args.epochs} epochs, linear warm-up over {args.warmup_frac:.0%} of steps then"
        " cosine decay to 0, gradient clipping at 1.0, cross-entropy, no dropout, the augmentation above. Features"
        f" precomputed once. torch seed {args.seed}, torch.set_num_threads({args.threads}). Fixed schedule; the final weights"
        " are saved (no checkpoint selection).",
        "",
        f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}.",
        "",
        "Reproduce (repository root):",
        "",
        "```",
        f"python exporters/builtin/train_sounds_ast.py --seed {args.seed} --out {rel_out}"
        + ("" if (args.train_size, args.eval_size, args.epochs, args.batch_size, args.lr, args.recorded_frac)
           == (10000, 1000, 12, 64, 1e-3, 0.5)
           else f" --train-size {args.train_size} --eval-size {args.eval_size} --epochs {args.epochs}"
                f" --batch-size {args.batch_size} --lr {args.lr:g} --recorded-frac {args.recorded_frac:g}"),
        "```",
        "",
        f"Wall time: {wall_s:.0f} s in total on 2 shared CPU cores ({data_s:.0f} s generating clips and extracting"
        f" features, {train_s:.0f} s training, the rest saving and the end-to-end evaluation).",
        "",
        "## Results",
        "",
        f"Held-out accuracy, end-to-end through this folder (`ASTFeatureExtractor.from_pretrained` +"
        f" `ASTForAudioClassification.from_pretrained` on the raw held-out waveforms): **{acc:.4f}**"
        f" ({int(round(acc * args.eval_size))}/{args.eval_size}).",
        "",
        f"On the held-out recordings (other rates, stereo, gain, a quieter second sound), through the same folder"
        f" after the runtime's downmix and resampling: **{acc_rec:.4f}** ({int(round(acc_rec * args.eval_size))}/{args.eval_size}).",
        "",
        "| class | held-out accuracy | held-out recordings | clips |",
        "|---|---|---|---|",
        *[f"| {c} | {per_class[c]:.3f} | {per_class_rec[c]:.3f} | {int(confusion[i].sum())} |"
          for i, c in enumerate(classes)],
        "",
        "The bundled samples (`exporters/sample_data/audio/`), read, downmixed and resampled as the runtime does:",
        "",
        *[f"- `{name}`: {label} ({score:.3f})" for name, (label, score) in samples.items()],
        "",
        "Confusion matrix (rows: true, columns: predicted, in `id2label` order):",
        "",
        "```",
        *[f"{c:12s} " + " ".join(f"{v:3d}" for v in confusion[i]) for i, c in enumerate(classes)],
        "```",
        "",
        "Training log:",
        "",
        "```",
        *log,
        "```",
        "",
    ]
    (out_dir / "MODEL_CARD.md").write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())

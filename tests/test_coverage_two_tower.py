"""Two-tower (zero-shot) models beyond CLIP and SigLIP: ChineseCLIP, MetaCLIP 2, AltCLIP,
ALIGN, BLIP (BlipModel and retrieval's contrastive heads), BLIP-2 retrieval's contrastive
heads and SigLIP2, each tiny and seeded, saved with a tiny tokenizer built here (WordPiece
for the BERT text towers, an XLM-R Unigram for the RoBERTa ones, a Gemma BPE for SigLIP2)
and exported with the task inferred from the architecture. Checked against the Hugging Face
source: identical token ids, image and caption embeddings at cosine >= 0.99999, zero-shot
probabilities within 1e-4. Two-tower architectures vlmedge does not export (as asked) are
refused by name.

SigLIP2 (NaFlex) is exported at image_size=NAFLEX_SIZE; the source gets the Siglip2
processor's own output for images of that aspect, which its smart resize brings to exactly
that size with every patch unmasked (tests.clip_models.naflex_inputs checks it), so both
sides see the same pixels. BLIP-2 embeds an image as one vector per query token, (N, Q, D),
compared vector for vector with the source's image_embeds.

The table (architecture, result, figures or the refusal) is printed at the end.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.clip_models import NAFLEX_SIZE, TWO_TOWERS, naflex_images, naflex_inputs, tiny_two_tower_folder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore")

CAPTIONS = ["a photo of a cat", "A Photo Of A DOG!", "café naïve", "日本語 中文字符 한국", "",
            "a red circle and a yellow star in the wild " * 8, "xyzzy 123 ??? ()"]
LABELS = ["cat", "dog", "car", "red circle", "yellow star", "hexagon"]
TEMPLATE = "a photo of a {}."
RESULTS: dict[str, str] = {}
NAFLEX = {"siglip2"}  # kinds exported at image_size=NAFLEX_SIZE
SIGMOID = {"SiglipModel", "Siglip2Model"}  # the architectures whose zero-shot probabilities are sigmoids


def _normalize(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _pooled(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.fixture(scope="module")
def sample_paths():
    from vlmedge.exporters.samples import sample_images

    return [str(p) for p in sample_images()]


@pytest.mark.parametrize("kind", TWO_TOWERS)
def test_two_tower_matches_hugging_face(kind, sample_paths, tmp_path):
    import vlmedge
    from transformers.image_utils import load_image

    torch.set_num_threads(1)
    folder = tiny_two_tower_folder(kind, tmp_path)
    size = "x".join(map(str, NAFLEX_SIZE))
    vlmedge.export(str(folder), tmp_path / "artifact", to=("onnx", "openvino"),  # both targets, as promised
                   **({"image_size": size} if kind in NAFLEX else {}))
    clip = vlmedge.load(tmp_path / "artifact")
    assert clip.task == "clip"
    assert {(e["graph"], e["target"]) for e in clip.model.artifact.model_entries() if e["parity"]["passed"]} == \
        {(graph, target) for graph in ("image", "text") for target in ("onnx", "openvino")}, f"{kind}: a file is missing"

    config = transformers.AutoConfig.from_pretrained(folder)
    arch = config.architectures[0]
    model = getattr(transformers, arch).from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    processor = transformers.AutoImageProcessor.from_pretrained(folder)

    if kind == "siglip-sentencepiece":  # the slow SentencePiece tokenizer, converted at export
        assert type(tokenizer).__name__ == "SiglipTokenizer" and getattr(tokenizer, "backend_tokenizer", None) is None
        assert clip.tokenizer.spec.prefix == "▁"
    # token ids, id for id
    ours = clip.tokenizer.encode(CAPTIONS)
    ref = tokenizer(CAPTIONS, padding="max_length", truncation=True, max_length=clip.context_length)
    assert ours["input_ids"].tolist() == ref["input_ids"]
    assert ours["attention_mask"].tolist() == ref["attention_mask"]

    text = tokenizer(CAPTIONS, padding="max_length", truncation=True, max_length=clip.context_length,
                     return_tensors="pt")
    if arch in ("BlipModel", "Blip2ForImageTextRetrieval"):  # their text towers take no token_type_ids
        text.pop("token_type_ids", None)
    if kind in NAFLEX:  # images the NaFlex processor resizes to exactly NAFLEX_SIZE, no padding patch
        images = naflex_images(sample_paths)
        image_inputs = naflex_inputs(processor, images)
    else:
        images = sample_paths
        image_inputs = {"pixel_values": processor([load_image(p) for p in sample_paths],
                                                  return_tensors="pt")["pixel_values"]}
    pixels = image_inputs["pixel_values"]
    with torch.no_grad():
        if arch == "BlipForImageTextRetrieval":  # the contrastive (ITC) heads: no get_*_features
            text_ref = model.text_proj(model.text_encoder(input_ids=text["input_ids"],
                                                          attention_mask=text["attention_mask"])[0][:, 0]).numpy()
            image_ref = model.vision_proj(model.vision_model(pixel_values=pixels)[0][:, 0]).numpy()
        elif arch == "Blip2ForImageTextRetrieval":  # its ITC output: normalised (T, D) and (N, Q, D) embeddings
            out = model(**text, pixel_values=pixels, use_image_text_matching_head=False)
            text_ref, image_ref = out.text_embeds.numpy(), out.image_embeds.numpy()
        else:
            text_ref = _pooled(model.get_text_features(**text)).numpy()
            image_ref = _pooled(model.get_image_features(**image_inputs)).numpy()
    ours = clip.embed_images(images)
    assert ours.shape == image_ref.shape, (ours.shape, image_ref.shape)
    text_cos = (_normalize(clip.embed_texts(CAPTIONS)) * _normalize(text_ref)).sum(-1).min()
    image_cos = (_normalize(ours) * _normalize(image_ref)).sum(-1).min()
    assert text_cos >= 0.99999 and image_cos >= 0.99999, (text_cos, image_cos)

    prompts = tokenizer([TEMPLATE.format(label) for label in LABELS], padding="max_length", truncation=True,
                        max_length=clip.context_length, return_tensors="pt")
    with torch.no_grad():
        if arch == "BlipForImageTextRetrieval":  # its contrastive score: the cosine, (images, texts)
            logits = model(input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"],
                           pixel_values=pixels, use_itm_head=False).itm_score
        elif arch in ("BlipModel", "Blip2ForImageTextRetrieval"):  # BLIP-2: the cosine, max over the query tokens
            logits = model(input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"],
                           pixel_values=pixels).logits_per_image
        else:
            logits = model(**prompts, **image_inputs).logits_per_image
    expected = (torch.sigmoid(logits) if arch in SIGMOID else logits.softmax(-1)).numpy()
    got = clip.probabilities(images, LABELS, [TEMPLATE])
    diff = float(np.abs(got - expected).max())
    assert diff <= 1e-4, diff
    assert expected.max() - expected.min() > 0.05  # the tiny model is far from uniform
    ranked = clip.zero_shot(images, LABELS, [TEMPLATE], top_k=3)
    assert [[p.index for p in row] for row in ranked] == [list(np.argsort(-r, kind="stable")[:3]) for r in expected]
    pooling = clip.model.artifact.manifest["source"]["text_pooling"]
    # towers pooled at EOS or CLS take captions of any length (each batch runs at its longest), SigLIP's last-token
    # pooling keeps the context; the parity above ran them so
    length = clip.model.sessions["text"].inputs[0].shape[1]
    assert isinstance(length, str) == (pooling != "last"), (pooling, length)
    RESULTS[arch] = (f"exported: text pooling {pooling}, length {'any' if isinstance(length, str) else length}, "
                     f"min cosine text {text_cos:.7f} image {image_cos:.7f}, max prob diff {diff:.1e}")


# case -> (architecture, model type, words of the expected refusal), exported without options: SigLIP2 needs
# image_size (the example is the default config's 16x16 grid of 16-pixel patches); Tipsv2 (a torchvision-only
# processor) and VideoPrism (a video model) are refused with their reasons.
REFUSED = {"Siglip2Model without image_size": ("Siglip2Model", "siglip2", "--image-size 256"),
           "Tipsv2Model": ("Tipsv2Model", "tipsv2", "exists only for torchvision"),
           "VideoPrismClipModel": ("VideoPrismClipModel", "videoprism", "video clips")}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_two_tower_is_refused_by_name(case, tmp_path):
    """The task is inferred from the architecture and the export refuses it in one sentence."""
    import json

    import vlmedge
    from vlmedge.errors import UnsupportedModelError

    arch, model_type, words = REFUSED[case]
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [arch]}))
    with pytest.raises(UnsupportedModelError, match=words) as info:
        vlmedge.export(str(folder), tmp_path / "artifact")
    assert "\n" not in str(info.value) and not (tmp_path / "artifact").exists()
    RESULTS[case] = f"refused: {info.value}"


def test_counts(capsys):
    """Prints the table of the runs above (it runs last in this file)."""
    if not RESULTS:
        pytest.skip("no architecture ran")
    exported = [a for a, r in RESULTS.items() if r.startswith("exported")]
    with capsys.disabled():
        print(f"\ntwo-tower coverage: {len(exported)} exported with parity, {len(RESULTS) - len(exported)} refused")
        for arch in sorted(RESULTS):
            print(f"  {arch:34s} {RESULTS[arch][:200]}")


def test_every_zero_shot_architecture_of_transformers_ran():
    """Every entry of transformers' zero-shot image-classification mapping was exported with
    parity or refused by name above (CLIPModel and SiglipModel in tests/test_clip.py), so an
    entry a new transformers adds fails here until it is covered (it runs after the others)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES

    from tests.clip_models import TWO_TOWERS as KINDS

    if len(RESULTS) < len(KINDS) + len(REFUSED):
        pytest.skip("only part of this file ran")
    covered = {case.split(" ")[0] for case in RESULTS} | {"CLIPModel", "SiglipModel"}
    missing = sorted(set(MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES.values()) - covered)
    assert not missing, f"transformers' zero-shot mapping has {missing}, which this file neither exports nor refuses"

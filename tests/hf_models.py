"""Tiny Hugging Face image classifiers of the real classes with seeded weights, and the
image processors of different kinds they are saved with."""

from __future__ import annotations

def image_processor(kind: str, size: int):
    """Image processors of different kinds: resize-only bilinear / bicubic, shortest edge + crop."""
    from transformers import BeitImageProcessorPil, BitImageProcessorPil, DeiTImageProcessorPil, ViTImageProcessorPil

    if kind == "vit-bilinear":
        return ViTImageProcessorPil(size={"height": size, "width": size}, resample=2)
    if kind == "deit-crop":
        return DeiTImageProcessorPil(size={"height": size + 6, "width": size + 6}, crop_size={"height": size, "width": size},
                                     resample=3)
    if kind == "beit-bicubic":
        return BeitImageProcessorPil(size={"height": size, "width": size}, resample=3, do_center_crop=False,
                                     image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    if kind == "bit-shortest-edge":
        return BitImageProcessorPil(size={"shortest_edge": size + 4}, crop_size={"height": size, "width": size},
                                    resample=3, do_convert_rgb=True)
    raise ValueError(kind)


def tiny_classifier(family: str, num_labels: int = 12):
    """A tiny classifier of the real class, seeded, with logits spread far enough apart
    that the top-5 order is not decided by float noise."""
    import torch
    import transformers as t

    torch.manual_seed(0)
    labels = {i: f"class_{i}" for i in range(num_labels)}
    common = dict(num_labels=num_labels, id2label=labels, label2id={v: k for k, v in labels.items()},
                  initializer_range=0.2)
    vit_like = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, **common)
    if family == "vit":
        model = t.ViTForImageClassification(t.ViTConfig(**vit_like))
    elif family == "deit":
        model = t.DeiTForImageClassification(t.DeiTConfig(**vit_like))
    elif family == "deit-distilled":
        model = t.DeiTForImageClassificationWithTeacher(t.DeiTConfig(**vit_like))
    elif family == "beit":
        model = t.BeitForImageClassification(t.BeitConfig(use_relative_position_bias=True, use_mean_pooling=True, **vit_like))
    elif family == "swin":
        model = t.SwinForImageClassification(t.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                          num_heads=[2, 2], window_size=4, **common))
    elif family == "dinov2":
        model = t.Dinov2ForImageClassification(t.Dinov2Config(image_size=32, patch_size=8, hidden_size=32,
                                                               num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                                               **common))
    else:
        raise ValueError(family)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "classifier" in name or "cls_classifier" in name or "distillation_classifier" in name:
                param.mul_(8.0)
    return model.eval()


# family -> processor kind: every family is paired with a different preprocessing
FAMILIES = {
    "vit": "vit-bilinear",
    "deit": "deit-crop",
    "deit-distilled": "bit-shortest-edge",
    "beit": "beit-bicubic",
    "swin": "bit-shortest-edge",
    "dinov2": "bit-shortest-edge",
}

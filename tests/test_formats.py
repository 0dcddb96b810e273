"""`vlmedge formats --architectures` and the README's architecture table say the same thing,
both computed by the export's own checks (vlmedge.exporters.sources.supported_architectures),
for every task exported from a Hugging Face folder; so do `vlmedge formats` and the README's
table of each backend's session options."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def rows():
    """The listing, computed once for this file (its first call imports every model's module)."""
    from vlmedge.formats import architectures

    return architectures()


def test_readme_architecture_table_is_what_formats_lists(rows):
    from vlmedge.formats import architectures_markdown

    expected = architectures_markdown(rows)
    block = re.search(r"<!-- architectures:start -->\n(.*?)\n<!-- architectures:end -->", README.read_text(), re.S)
    assert block, "README.md has no architecture table between its markers"
    assert block.group(1).strip() == expected, "README's architecture table is stale; replace it with:\n" + expected


def test_readme_session_options_are_the_declared_ones():
    """The README's table of session options is runtimes.base.BACKENDS's, which `vlmedge
    formats --json` lists too."""
    import json
    import subprocess
    import sys

    facts = json.loads(subprocess.run([sys.executable, "-m", "vlmedge", "formats", "--json"], check=True,
                                      capture_output=True, text=True).stdout)
    declared = {(b["name"], o["name"], o["meaning"]) for b in facts["backends"] for o in b["session_options"]}
    text = README.read_text()
    table = text[text.index("| backend | option | what it sets |"):]
    table = table[:table.index("\n\n")]
    listed = {tuple(cell.strip() for cell in line.strip("|").split("|")) for line in table.splitlines()[2:]}
    assert declared and listed == declared, "README's session options are stale; they are:\n" + "\n".join(
        f"| {' | '.join(row)} |" for row in sorted(declared))


# The least share of each task's architectures that exports, just under today's, so that a check
# refusing wrongly (or a family a new transformers breaks) fails here while a new architecture vlmedge
# does not support yet does not. Counted as the issue counts them: rows refused for a package this
# environment lacks (natten; timm, whose torchvision has no CPU release here) or for being a backbone
# class without a base model (nothing to pool an embedding from) say nothing of vlmedge and are left out;
# SigLIP2's rows, exported with --image-size, count as exported. (clip: Tipsv2 and VideoPrism are refused.)
MIN_EXPORTED = {"image-classification": 0.9, "clip": 0.8, "image-embedding": 0.85, "audio-classification": 0.9}
NOT_COUNTED = ("not installed", "cannot be imported", "no base model")


def test_every_refused_architecture_says_why(rows):
    assert rows and all(r["reason"] for r in rows if r["exports"] == "no")
    assert {r["task"] for r in rows} == set(MIN_EXPORTED)
    for task, least in MIN_EXPORTED.items():
        counted = [r for r in rows if r["task"] == task and not any(words in r["reason"] for words in NOT_COUNTED)]
        exported = [r for r in counted if r["exports"] == "yes" or "--image-size" in r["reason"]]
        assert len(exported) >= least * len(counted), (task, len(exported), len(counted))


def test_every_architecture_of_the_builders_is_listed(rows):
    """The builders' own tables (exported and refused) and the audio architectures all have a row
    of their task, so a family added to a source shows in the listing."""
    from vlmedge.exporters.sources.hf import clip as hf_clip, encoder as hf_encoder
    from vlmedge.exporters.sources.hf import TASK_ARCHITECTURES

    listed = {(r["task"], r["architecture"]) for r in rows}
    expected = {("image-embedding", a) for a in [*hf_encoder.FAMILIES, *hf_encoder.REFUSED]}
    expected |= {("clip", a) for a in [*hf_clip.TWO_TOWERS, *hf_clip.REFUSED]}
    expected |= {("audio-classification", a) for a in TASK_ARCHITECTURES["audio-classification"]}
    assert not expected - listed, sorted(expected - listed)


@pytest.mark.parametrize("arch, advice", [
    # a head vlmedge does not export over a backbone it does: export the backbone
    ("ViTForMaskedImageModeling", "save its backbone, ViTModel, and its processor in a FOLDER "
                                  "(model.base_model.save_pretrained(FOLDER), processor.save_pretrained(FOLDER)) and "
                                  "export that (image-embedding)"),
    ("SegformerForSemanticSegmentation", "save its backbone, SegformerModel"),
    ("Wav2Vec2ForCTC", "`vlmedge formats --architectures` lists those it exports"),  # no task takes Wav2Vec2Model
    ("BertForSequenceClassification", "`vlmedge formats --architectures` lists those it exports"),
])
def test_a_refused_architecture_is_told_what_to_do(arch, advice):
    pytest.importorskip("transformers")
    from vlmedge.errors import UnsupportedModelError
    from vlmedge.exporters.sources.hf import infer_task

    with pytest.raises(UnsupportedModelError, match="it is not a supported image, CLIP or audio model; ") as caught:
        infer_task(arch)
    assert advice in str(caught.value)

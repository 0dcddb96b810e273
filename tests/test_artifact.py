"""The artifact: atomic writes, hash verification, schema versions, path safety."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import vlmedge
from vlmedge.artifact import Artifact, ArtifactWriter
from vlmedge.errors import ArtifactError, ExportError, InputError, ModelNotFoundError, ParityError, UsageError
from vlmedge.parity import GATES


def _rewrite_manifest(root: Path, change) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_manifest_describes_every_file(vit_artifact):
    artifact = Artifact.open(vit_artifact)
    m = artifact.manifest
    assert m["schema_version"] == 1 and m["format_revision"] == 3 and m["task"] == "image-classification"
    assert m["source"]["architecture"] == "ViTForImageClassification" and len(m["source"]["config_sha256"]) == 64
    assert m["preprocess"]["image"]["size"] == {"height": 32, "width": 32}
    assert len(m["labels"]) == 12 and m["postprocess"]["activation"] == "softmax"
    assert {"vlmedge", "torch", "onnx", "onnxruntime"} <= set(m["versions"])
    (model,) = artifact.model_entries()
    assert model["path"] == "onnx/model.fp32.onnx" and model["target"] == "onnx"
    graph = m["graphs"]["model"]
    assert graph["inputs"][0]["name"] == "pixel_values" and graph["inputs"][0]["shape"][0] == "batch"
    assert graph["outputs"][0]["name"] == "logits"
    roles = {e["role"] for e in artifact.files}
    assert {"model", "parity_inputs", "sample"} <= roles


def test_export_takes_targets_and_precisions_as_a_list_a_name_or_names_joined_by_commas():
    """As the CLI's --to onnx,openvino: `to="onnx"` is one target, not the letters o, n, n, x."""
    from vlmedge.exporters.pipeline import plan_variants

    def planned(to, precision):
        return plan_variants(to, precision, 18, None, lambda _: None).variants

    assert planned("onnx", "fp32") == planned(["onnx"], ["fp32"]) == [("onnx", "fp32")]
    assert planned("onnx, onnx", "fp32,int8") == planned(("onnx",), ("fp32", "int8"))
    with pytest.raises(UsageError, match="Unsupported target onyx; choose from onnx"):  # as to=None is
        planned("onyx", "fp32")


@pytest.mark.parametrize("opset", [16, 99, "18", 17.5, True, None])
def test_an_opset_torch_onnx_cannot_export_is_refused_before_anything_loads(opset):
    """Not a TypeError, nor torch.onnx's refusal after loading blamed on the model."""
    from vlmedge.errors import UsageError
    from vlmedge.exporters.onnx import MAX_OPSET, MIN_OPSET
    from vlmedge.exporters.pipeline import plan_variants

    assert plan_variants("onnx", "fp32", MAX_OPSET, None, lambda _: None).opset == MAX_OPSET
    with pytest.raises(UsageError, match=rf"opset must be a whole number from {MIN_OPSET} to {MAX_OPSET} .*not "):
        plan_variants("onnx", "fp32", opset, None, lambda _: None)


def test_a_target_whose_package_is_not_installed_is_refused_before_the_model_loads(monkeypatch, tmp_path):
    """It failed after the model loaded and every ONNX file was built, on a ModuleNotFoundError."""
    import importlib.util

    from vlmedge.errors import BackendUnavailableError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(BackendUnavailableError, match=r"Cannot build openvino files here: .*'openvino' package, which is "
                                                      r"not installed; install it with: pip install 'vlmedge\[openvino\]'"):
        vlmedge.export("builtin:no-such-model-either", tmp_path / "out", to="onnx,openvino")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("option, message", [
    ({"to": None}, r"The target must be a name or a list of names \(onnx, .*\), not None"),
    ({"precision": ["fp32", 8]}, r"The precision must be a name or a list of names \(fp32, .*\), not \['fp32', 8\]"),
    ({"calibration": 123}, r"calibration must be a path or \{graph: \{input: array\}\}, not int"),
    ({"evaluation": 123}, r"evaluation must be the path of a folder of labelled files, not int"),
    ({"progress": "x"}, r"progress must be a function taking a line of text, not str"),
    ({"gates": {"int8": (0.9, None, 0.5)}}, r"gates must map precisions \(fp32, .*\) to vlmedge.parity.Gate"),
    ({"gates": {"int4": GATES["int8"]}}, r"gates must map precisions \(fp32, .*\) to vlmedge.parity.Gate"),
    ({"gates": {"int8": dataclasses.replace(GATES["int8"], min_cosine=2.0)}},
     r"gates\['int8'\]\.min_cosine must be a number from -1 to 1, not 2\.0"),
    ({"gates": {"fp16": dataclasses.replace(GATES["fp16"], max_abs=-1)}},
     r"gates\['fp16'\]\.max_abs must be a number from 0 to inf, not -1"),
    ({"task": ""}, r"task must be one of image-classification, .*, or None to take it from the model, not ''"),
    ({"task": "detection"}, r"task must be one of image-classification, .*not 'detection'"),
])
def test_export_arguments_of_the_wrong_type_are_one_sentence_before_anything_loads(option, message, tmp_path):
    from vlmedge.errors import VlmedgeError

    with pytest.raises(VlmedgeError, match=message):
        vlmedge.export("no-such-model", tmp_path / "out", **option)
    assert not (tmp_path / "out").exists()


def test_a_misspelt_source_option_is_refused_not_dropped(hf_classifier_dir, tmp_path):
    """A keyword the source does not take (calibraton= for calibration=) would be swallowed by
    its builder, and int8 calibrated on the wrong data without a word: it is refused instead."""
    torch = pytest.importorskip("torch")
    from vlmedge.errors import UsageError

    with pytest.raises(UsageError, match=r"ViTForImageClassification \(image-classification\) takes no option "
                                         r"'calibraton', 'imagesize'; its source takes image_size"):
        vlmedge.export(str(hf_classifier_dir("vit")), tmp_path / "out", calibraton=tmp_path, imagesize=64)
    with pytest.raises(UsageError, match=r"A Linear module takes no option 'preproces'; its source takes preprocess, "
                                         r"labels"):
        vlmedge.export(torch.nn.Linear(2, 2), tmp_path / "out", preproces={}, labels=["a", "b"])
    # a preprocess= dict that is not a spec's is the caller's mistake, not an artifact's to re-export
    with pytest.raises(UsageError, match=r"preprocess= must be an ImagePreprocessSpec or a dict of its fields, with size"):
        vlmedge.export(torch.nn.Linear(2, 2), tmp_path / "out", preprocess={"sise": 24}, labels=["a", "b"])
    with pytest.raises(InputError, match=r"size must be a dict with integer values from 1 to 8192"):
        vlmedge.export(torch.nn.Linear(2, 2), tmp_path / "out", preprocess={"size": 24}, labels=["a", "b"])
    assert not (tmp_path / "out").exists()


def test_calibration_data_or_a_task_the_model_does_not_have_is_refused_by_name(hf_classifier_dir, tmp_path):
    """Calibration feeds for a misspelt graph left that graph calibrated on the bundled samples
    without a word; a task the model's class is not made for failed in that task's builder, on
    a cause that was not the user's (an audio feature extractor for a ViT)."""
    from vlmedge.errors import InputError, UnsupportedModelError

    folder = str(hf_classifier_dir("vit"))
    with pytest.raises(InputError, match=r"calibration names graph\(s\) 'image' this model does not have; "
                                         r"its graphs are model"):
        vlmedge.export(folder, tmp_path / "out", precision="int8", calibration={"image": {}})
    with pytest.raises(InputError, match=r"calibration\['model'\] must map each of the graph's inputs "
                                         r"\(pixel_values\) to a non-empty array"):
        vlmedge.export(folder, tmp_path / "out", precision="int8", calibration={"model": {"pixels": np.zeros(3)}})
    for task in ("audio-classification", "clip", "image-embedding"):
        with pytest.raises(UnsupportedModelError, match=rf"ViTForImageClassification is exported for "
                                                        rf"image-classification, not {task}: leave out the task"):
            vlmedge.export(folder, tmp_path / "out", task=task)
    assert not (tmp_path / "out").exists()


def test_a_loaded_pipeline_reads_as_one_line(vit_artifact):
    """In a notebook or a log, a pipeline and its artifact say what runs, not the manifest."""
    import vlmedge

    classifier = vlmedge.load(vit_artifact, backend="onnxruntime", precision="fp32")
    text = repr(classifier)
    assert text == (f"ImageClassifier(ModelSessions({str(vit_artifact)!r}, backend='onnxruntime', precision='fp32', "
                    "device='cpu', provider='CPUExecutionProvider', graphs=['model']))")
    assert repr(classifier.model.artifact).startswith(f"Artifact({str(vit_artifact)!r}, task='image-classification'")


def test_one_image_as_bytes_bytearray_or_memoryview_is_one_input(vit_artifact):
    """load_image reads all three; a single bytearray was refused where a list of one worked."""
    import vlmedge

    classifier = vlmedge.load(vit_artifact, backend="onnxruntime", precision="fp32")
    data = (Path(__file__).resolve().parent.parent / "exporters" / "sample_data" / "red-circle.jpg").read_bytes()
    expected = classifier.classify(data, top_k=2)
    assert classifier.classify(bytearray(data), top_k=2) == classifier.classify(memoryview(data), top_k=2) == expected
    assert classifier.classify([bytearray(data)], top_k=2) == [expected]
    # top_k=None: every label, best first, as transformers' pipeline and tag() take it
    every = classifier.classify(data, top_k=None)
    assert len(every) == len(classifier.labels) and every[:2] == expected
    assert [p.score for p in every] == sorted((p.score for p in every), reverse=True)


def test_onnx_file_is_valid_with_dynamic_batch(vit_artifact):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(vit_artifact / "onnx" / "model.fp32.onnx"))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch"
    classifier = vlmedge.load(vit_artifact)
    images = [np.full((40, 30, 3), v, np.uint8) for v in (0, 100, 200)]
    assert classifier.probabilities(images).shape == (3, 12)


def test_tampered_model_file_is_refused_naming_the_file(artifact_copy):
    path = artifact_copy / "onnx" / "model.fp32.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"onnx/model\.fp32\.onnx.*sha256"):
        vlmedge.load(artifact_copy)


def test_external_data_under_another_listed_name_is_refused_unhashed(artifact_copy):
    """A load hashes a model file and the weights files named after it; an ONNX file whose
    external data was another listed file, of the right size but altered, ran unhashed."""
    import hashlib

    import onnx

    path = artifact_copy / "onnx" / "model.fp32.onnx"
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, location="weights-other.bin",
                    size_threshold=1024)
    manifest = json.loads((artifact_copy / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "onnx/model.fp32.onnx":
            entry.update(size=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    weights = path.parent / "weights-other.bin"
    manifest["files"].append({"path": "onnx/weights-other.bin", "role": "weights", "size": weights.stat().st_size,
                              "sha256": hashlib.sha256(b"not these bytes").hexdigest(), "graph": "model"})
    (artifact_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"onnx/model\.fp32\.onnx in .* reads its weights from 'weights-other\.bin', "
                                            r"which is not one of its own weights files; the artifact was altered"):
        vlmedge.load(artifact_copy, backend="onnxruntime", cache=False)


def test_a_misspelt_load_keyword_is_named_as_such(vit_artifact):
    """It was called a session option the backend does not take ('session_options', 'precison')."""

    for keyword in ("precison", "session_options"):
        with pytest.raises(UsageError, match=rf"vlmedge.load takes no keyword '{keyword}'; it takes backend, device, "
                                             r"precision, decode_workers, cache, batch_size and the backends' session "
                                             r"options: threads"):
            vlmedge.load(vit_artifact, **{keyword: 1})


def test_a_file_recorded_as_failing_its_gate_is_not_loaded(artifact_copy):
    """An export leaves a failing file out, so a manifest that says one failed was edited: it
    loaded and ran anyway, where `vlmedge info` showed FAIL."""
    manifest = json.loads((artifact_copy / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"] == "onnx/model.fp32.onnx")
    entry["parity"].update(passed=False, failures=["output 'logits': cosine similarity 0.5 < 0.9999"])
    (artifact_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"onnx/model\.fp32\.onnx in .* is recorded as failing its parity gate "
                                            r"\(output 'logits': cosine similarity 0.5 < 0.9999\); .* re-export"):
        vlmedge.load(artifact_copy, precision="fp32")


def test_a_load_hashes_only_the_model_files_it_opens(two_target_artifact, tmp_path, monkeypatch):
    """vlmedge.load hashes the model and weights files of the backend it opens, not the other
    target's (checked for size only), and every other file; a same-size change to the other
    target's weights is refused when that target is loaded, a truncation at once."""
    pytest.importorskip("openvino", reason="the openvino package is not installed")
    import vlmedge.artifact as artifact_module

    root = tmp_path / "vit"
    shutil.copytree(two_target_artifact, root)
    hashed = []
    real = artifact_module.sha256_file
    monkeypatch.setattr(artifact_module, "sha256_file",
                        lambda path: hashed.append(Path(path).relative_to(root).as_posix()) or real(path))
    files = json.loads((root / "manifest.json").read_text())["files"]
    openvino_files = {e["path"] for e in files if e["path"].startswith("openvino/")}
    assert {"openvino/model.fp32.xml", "openvino/model.fp32.bin"} <= openvino_files

    vlmedge.load(root, backend="onnxruntime", precision="fp32", cache=False)
    assert sorted(hashed) == sorted(e["path"] for e in files if e["path"] not in openvino_files)

    weights = root / "openvino" / "model.fp32.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert vlmedge.load(root, backend="onnxruntime", precision="fp32", cache=False).model.backend == "onnxruntime"
    with pytest.raises(ArtifactError, match=r"openvino/model\.fp32\.bin in .* does not match the sha256"):
        vlmedge.load(root, backend="openvino", precision="fp32", cache=False)

    weights.write_bytes(bytes(data[:-8]))
    with pytest.raises(ArtifactError, match=r"openvino/model\.fp32\.bin in .* does not match the sha256"):
        vlmedge.load(root, backend="onnxruntime", precision="fp32", cache=False)


def test_the_first_load_after_an_export_hashes_nothing(hf_classifier_dir, tmp_path, monkeypatch):
    """The export records the sha256 of each file it wrote in the verified-file memo; with the
    memo off, the same load hashes every file it reads."""
    import vlmedge.artifact as artifact_module

    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VLMEDGE_NO_CACHE", raising=False)
    out = tmp_path / "vit"
    vlmedge.export(str(hf_classifier_dir("vit")), out)
    hashed = []
    real = artifact_module.sha256_file
    monkeypatch.setattr(artifact_module, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    vlmedge.load(out)
    assert hashed == []
    vlmedge.load(out, cache=False)
    assert "model.fp32.onnx" in hashed and "parity.npz" in hashed


def test_truncated_and_missing_and_extra_files_are_refused(artifact_copy):
    sample = next((artifact_copy / "samples").glob("*.png"))
    shutil.copy(sample, artifact_copy / "stowaway.png")
    with pytest.raises(ArtifactError, match="stowaway.png"):
        Artifact.open(artifact_copy)
    (artifact_copy / "stowaway.png").unlink()
    model = artifact_copy / "onnx" / "model.fp32.onnx"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="model.fp32.onnx"):
        Artifact.open(artifact_copy)
    model.unlink()
    with pytest.raises(ArtifactError, match="missing onnx/model.fp32.onnx"):
        Artifact.open(artifact_copy)


def test_a_file_the_user_may_not_read_is_named_in_one_sentence(artifact_copy):
    """An artifact copied by another user (a model file of mode 600, a folder of 700) gave a
    PermissionError traceback from load, predict, info, check and bench."""
    import subprocess
    import sys

    from tests.test_compiled_cache import without_permission_override

    prefix = without_permission_override()
    model = artifact_copy / "onnx" / "model.fp32.onnx"
    for locked, named in ((model, "onnx/model.fp32.onnx"), (model.parent, "onnx/model.fp32.onnx"),
                          (artifact_copy / "manifest.json", "manifest.json")):
        mode = locked.stat().st_mode
        locked.chmod(0)
        try:
            done = subprocess.run([*prefix, sys.executable, "-m", "vlmedge", "info", str(artifact_copy)],
                                  capture_output=True, text=True, timeout=120)
        finally:
            locked.chmod(mode)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip() == (f"Error: {named} in artifact {artifact_copy} cannot be read (Permission denied); "
                                       "check its permissions: every file of an artifact must be readable by the "
                                       "user who loads it.")


def test_unknown_schema_version_is_refused(artifact_copy):
    _rewrite_manifest(artifact_copy, lambda m: m.update(schema_version=2))
    with pytest.raises(ArtifactError, match="schema version 2"):
        vlmedge.load(artifact_copy)


def test_corrupt_manifest_is_refused(artifact_copy):
    (artifact_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Artifact.open(artifact_copy)


@pytest.mark.parametrize("bad_path", ["/etc/passwd", "../outside.onnx", "onnx/../../outside.onnx"])
def test_paths_leaving_the_artifact_are_refused(artifact_copy, bad_path):
    _rewrite_manifest(artifact_copy, lambda m: m["files"][0].update(path=bad_path))
    with pytest.raises(ArtifactError, match="leaves the artifact folder"):
        Artifact.open(artifact_copy)


def test_symlinked_model_file_is_refused(artifact_copy, tmp_path):
    model = artifact_copy / "onnx" / "model.fp32.onnx"
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(model, outside)
    os.symlink(outside, model)
    with pytest.raises(ArtifactError, match="symbolic link"):
        Artifact.open(artifact_copy)


def test_external_data_outside_the_artifact_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from vlmedge.runtimes.onnx_external import check_external_data, external_data_locations

    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    weight.data_location = TensorProto.EXTERNAL
    del weight.float_data[:]
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../secret.bin"
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], initializer=[weight])
    path = tmp_path / "art" / "onnx" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert external_data_locations(path) == ["../../secret.bin"]
    with pytest.raises(ArtifactError, match="outside its artifact folder"):
        check_external_data(path, tmp_path / "art")


def test_failed_export_leaves_previous_artifact_intact(vit_artifact, tmp_path):
    target = tmp_path / "art"
    shutil.copytree(vit_artifact, target)
    before = (target / "manifest.json").read_bytes()
    with pytest.raises(ModelNotFoundError, match="no built-in model"):
        vlmedge.export("builtin:no-such-model-here", target)
    with pytest.raises(KeyboardInterrupt):
        with ArtifactWriter(target) as writer:
            writer.path("onnx/half-written.onnx").write_bytes(b"partial")
            raise KeyboardInterrupt
    assert (target / "manifest.json").read_bytes() == before
    assert Artifact.open(target)
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_commit_replaces_an_existing_artifact(vit_artifact, tmp_path):
    target = tmp_path / "art"
    shutil.copytree(vit_artifact, target)
    with ArtifactWriter(target) as writer:
        writer.path("notes.txt").write_text("hello")
        writer.add("notes.txt", role="resource")
        writer.commit({"task": "image-classification", "graphs": {}, "preprocess": {}})
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_writer_refuses_to_overwrite_a_folder_that_is_not_an_artifact(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("do not delete")
    with pytest.raises(ExportError, match="not a vlmedge artifact"):
        ArtifactWriter(tmp_path / "precious")
    # another tool's manifest.json with a schema version and a file list is not an artifact either
    (tmp_path / "precious" / "manifest.json").write_text('{"schema_version": 3, "files": [], "name": "my dataset"}')
    with pytest.raises(ExportError, match="not a vlmedge artifact"):
        ArtifactWriter(tmp_path / "precious")
    (tmp_path / "precious" / "manifest.json").write_text("[1, 2]")  # an AttributeError before
    with pytest.raises(ExportError, match="not a vlmedge artifact"):
        ArtifactWriter(tmp_path / "precious")
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "do not delete"


def test_a_mount_point_as_the_output_is_refused_before_any_work(tmp_path):
    """An export into a mount point (a container's `-v host:/out` volume) built every variant,
    then failed its swap with an OSError traceback (EBUSY) and kept nothing."""
    import subprocess

    (tmp_path / "volume").mkdir()
    (tmp_path / "host").mkdir()
    mounted = subprocess.run(["mount", "--bind", str(tmp_path / "host"), str(tmp_path / "volume")],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.strip()}")
    try:
        with pytest.raises(ExportError, match=rf"^{tmp_path / 'volume'} is a mount point, which an export cannot replace "
                                              rf".*export into a folder inside it: -o {tmp_path / 'volume' / 'NAME'}\.$"):
            ArtifactWriter(tmp_path / "volume")
        with ArtifactWriter(tmp_path / "volume" / "art") as writer:  # inside it, as the message says
            writer.commit({"task": "image-classification", "graphs": {}, "preprocess": {}})
        assert (tmp_path / "host" / "art" / "manifest.json").is_file()
    finally:
        subprocess.run(["umount", str(tmp_path / "volume")], check=True)


def test_re_exporting_fewer_variants_says_which_files_of_the_earlier_artifact_are_gone(hf_classifier_dir, tmp_path):
    """An export replaces the artifact at its output whole: a re-export of the ONNX target
    alone over an ONNX and OpenVINO artifact removed the OpenVINO files with a plain "success"."""
    pytest.importorskip("openvino")
    out, folder = tmp_path / "art", str(hf_classifier_dir("vit"))
    vlmedge.export(folder, out, to=["onnx", "openvino"])
    said: list[str] = []
    vlmedge.export(folder, out, to=["onnx"], progress=said.append)
    assert said[-1].endswith("; the earlier artifact's openvino/model.fp32.bin, openvino/model.fp32.xml were not "
                             "made again and are gone")
    vlmedge.export(folder, out, to=["onnx"], progress=said.append)
    assert said[-1].endswith("s")  # the same files again: nothing to say


def test_an_export_over_an_artifact_holding_files_of_its_own_names_them_and_deletes_nothing(vit_artifact, tmp_path):
    """An export replaces the folder whole: a file added beside the artifact's went with it."""
    target = tmp_path / "art"
    shutil.copytree(vit_artifact, target)
    (target / "samples" / "my-photo.jpg").write_bytes(b"mine")
    (target / "NOTES.md").write_text("how we trained it")
    with pytest.raises(ExportError, match=r"holds NOTES\.md, samples/my-photo\.jpg, which the artifact there does not "
                                          r"list, and an export replaces the whole folder; move them out"):
        ArtifactWriter(target)
    assert (target / "NOTES.md").read_text() == "how we trained it"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_a_destination_that_is_a_link_becomes_the_artifact_and_leaves_no_link_behind(vit_artifact, tmp_path):
    """The swap moved the link to a temporary name that was never removed (rmtree of a link
    fails quietly), and later exports skipped it; what the link pointed to is untouched."""
    shutil.copytree(vit_artifact, tmp_path / "v1")
    before = (tmp_path / "v1" / "manifest.json").read_bytes()
    (tmp_path / "current").symlink_to("v1")
    with ArtifactWriter(tmp_path / "current") as writer:
        writer.path("notes.txt").write_text("hello")
        writer.add("notes.txt", role="resource")
        writer.commit({"task": "image-classification", "graphs": {}, "preprocess": {}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v1"]
    assert not (tmp_path / "current").is_symlink() and (tmp_path / "v1" / "manifest.json").read_bytes() == before


def test_parity_failure_reports_numbers_and_writes_nothing(tmp_path):
    torch = pytest.importorskip("torch")
    from vlmedge.preprocess.image import ImagePreprocessSpec

    class BranchOnData(torch.nn.Module):
        """Data-dependent control flow: tracing records one branch, so the export is wrong."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.head = torch.nn.Linear(3 * 16 * 16, 4)

        def forward(self, pixel_values):
            logits = self.head(pixel_values.flatten(1))
            return logits if pixel_values.shape[0] == 2 else -logits

    spec = ImagePreprocessSpec(size={"height": 16, "width": 16})
    out = tmp_path / "broken"
    with pytest.raises(ParityError) as info:
        vlmedge.export(BranchOnData(), out, preprocess=spec, labels=list("abcd"))
    message = str(info.value)
    assert "max abs error" in message and "at index" in message and "(the gate would pass at max_abs >= " in message
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_plain_module_with_preprocessing_and_labels(tmp_path):
    torch = pytest.importorskip("torch")
    from vlmedge.preprocess.image import ImagePreprocessSpec, load_image, preprocess_images

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 4), torch.nn.GELU(), torch.nn.Flatten(),
                                 torch.nn.Linear(8 * 4 * 4, 3))
    spec = ImagePreprocessSpec(size={"height": 16, "width": 16}, resample="bicubic")
    module.train()  # exported half way through its training: it was left in eval mode
    vlmedge.export(module, tmp_path / "plain", preprocess=spec, labels=["cat", "dog", "car"])
    assert all(m.training for m in module.modules())
    module.eval()
    classifier = vlmedge.load(tmp_path / "plain")
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    pixels = torch.from_numpy(preprocess_images([load_image(image)], spec))
    with torch.no_grad():
        expected = module(pixels).softmax(-1).numpy()
    np.testing.assert_allclose(classifier.probabilities(image), expected, atol=1e-5)
    assert {p.label for p in classifier.classify(image, top_k=3)} == {"cat", "dog", "car"}


@pytest.mark.parametrize("wrapper", ["torch.compile", "DataParallel"])
def test_a_wrapped_module_exports_the_module_it_wraps(wrapper, tmp_path):
    """torch.compile's module failed in the tracer (its message: use FX ...); a DataParallel
    one was recorded as architecture DataParallel. A state dict is said to be one."""
    torch = pytest.importorskip("torch")
    from vlmedge.errors import UnsupportedModelError
    from vlmedge.preprocess.image import ImagePreprocessSpec, load_image, preprocess_images

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3)).eval()
    wrapped = torch.compile(module) if wrapper == "torch.compile" else torch.nn.DataParallel(module)
    spec = ImagePreprocessSpec(size={"height": 16, "width": 16})
    artifact = vlmedge.export(wrapped, tmp_path / "a", preprocess=spec, labels=["cat", "dog", "car"])
    assert artifact.manifest["source"]["architecture"] == "Sequential"
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = module(torch.from_numpy(preprocess_images([load_image(image)], spec))).softmax(-1).numpy()
    np.testing.assert_allclose(vlmedge.load(tmp_path / "a").probabilities(image), expected, atol=1e-5)
    for checkpoint in (module.state_dict(), {"state_dict": module.state_dict(), "epoch": 3}):  # Lightning's
        with pytest.raises(UnsupportedModelError, match=r"Cannot export a state dict \(or a checkpoint holding one, "
                                                        r"as Lightning saves\), .*load it into its module"):
            vlmedge.export(checkpoint, tmp_path / "b", preprocess=spec, labels=["cat", "dog", "car"])
    in_place = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    in_place[1].compile()
    with pytest.raises(UnsupportedModelError, match=r"its part '1' was compiled in place \(.compile\(\)\)"):
        vlmedge.export(in_place, tmp_path / "c", preprocess=spec, labels=["cat", "dog", "car"])
    in_place[1] = torch.compile(torch.nn.Linear(3 * 16 * 16, 3))
    with pytest.raises(UnsupportedModelError, match=r"its part '1' is wrapped by torch.compile"):
        vlmedge.export(in_place, tmp_path / "c", preprocess=spec, labels=["cat", "dog", "car"])
    with pytest.raises(UnsupportedModelError, match=r"Cannot export a dict; pass the module it holds under 'model'"):
        vlmedge.export({"model": module}, tmp_path / "c", preprocess=spec, labels=["cat", "dog", "car"])


def test_a_plain_modules_labels_may_be_a_file_one_label_a_line(tmp_path):
    """labels="labels.txt" names a file, as --labels FILE does: not the characters of its name."""
    torch = pytest.importorskip("torch")
    from vlmedge.exporters.sources.module import from_module
    from vlmedge.preprocess.image import ImagePreprocessSpec

    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    spec = ImagePreprocessSpec(size={"height": 16, "width": 16})
    (tmp_path / "labels.txt").write_text("cat\ndog\n\ncar\n", encoding="utf-8")
    for labels in (str(tmp_path / "labels.txt"), tmp_path / "labels.txt"):
        assert from_module(module, preprocess=spec, labels=labels).labels == ["cat", "dog", "car"]
    with pytest.raises(ModelNotFoundError, match="The labels file abc does not exist"):
        from_module(module, preprocess=spec, labels="abc")
    # a label given twice or empty was exported, and served, as it was
    from vlmedge.errors import UsageError

    with pytest.raises(UsageError, match=r"Label 'cat' is given twice \(labels 0 and 1\); give each class its own"):
        from_module(module, preprocess=spec, labels=["cat", "cat", "dog"])
    with pytest.raises(UsageError, match="Label 2 is empty; give every class a name"):
        from_module(module, preprocess=spec, labels=["cat", "dog", " "])


def test_a_branch_on_the_inputs_values_is_said_when_traced(tmp_path):
    """A module branching on its input's values exported with the branch its example input
    took, and passed its gate when no parity input took the other: the tracer's warning was
    silenced with the libraries' own. The user's line is now named; transformers' models, whose
    tracer warnings are all on shapes, raise none."""
    import warnings

    torch = pytest.importorskip("torch")
    from vlmedge.exporters.onnx import TracedBranchWarning
    from vlmedge.preprocess.image import ImagePreprocessSpec

    class BrightFlip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.head = torch.nn.Linear(3 * 16 * 16, 3)

        def forward(self, pixel_values):
            logits = self.head(pixel_values.flatten(1))
            if pixel_values.mean() > 100:  # never, for the parity inputs: normalised pixels
                return -logits
            return logits

    spec = ImagePreprocessSpec(size={"height": 16, "width": 16})
    with pytest.warns(TracedBranchWarning, match=r"^Graph 'model' turned a tensor into a Python value while it was "
                                                 r"traced \(at test_artifact.py:\d+\): a branch or loop on it is frozen"):
        vlmedge.export(BrightFlip(), tmp_path / "flip", preprocess=spec, labels=list("abc"))
    from tests.hf_models import FAMILIES, image_processor, tiny_classifier

    tiny_classifier("vit", num_labels=3).save_pretrained(tmp_path / "hf")
    image_processor(FAMILIES["vit"], 32).save_pretrained(tmp_path / "hf")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TracedBranchWarning)
        vlmedge.export(str(tmp_path / "hf"), tmp_path / "vit")


def test_plain_module_labels_as_a_bom_file_a_dict_or_a_generator(tmp_path):
    """A labels file with a byte-order mark (Windows Notepad's) gave the label '\ufeffcat'; an
    id2label dict became ['0', '1', '2']; a generator raised TypeError."""
    torch = pytest.importorskip("torch")
    from vlmedge.errors import UsageError
    from vlmedge.exporters.sources.module import from_module
    from vlmedge.preprocess.image import ImagePreprocessSpec

    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    spec = ImagePreprocessSpec(size={"height": 16, "width": 16})
    (tmp_path / "labels.txt").write_text("cat\ndog\ncar\n", encoding="utf-8-sig")
    for labels in (tmp_path / "labels.txt", {2: "car", 0: "cat", 1: "dog"}, (name for name in ["cat", "dog", "car"])):
        assert from_module(module, preprocess=spec, labels=labels).labels == ["cat", "dog", "car"]
    with pytest.raises(UsageError, match="labels= as a dict maps class ids 0, 1, ... to names"):
        from_module(module, preprocess=spec, labels={"cat": 0, "dog": 1, "car": 2})
    with pytest.raises(UsageError, match="^labels= is a set, which has no order"):  # names in the hash's order
        from_module(module, preprocess=spec, labels={"cat", "dog", "car"})
    with pytest.raises(UsageError, match=r"^Labels 'cat' and ' cat' \(labels 0 and 2\) differ only in the spaces"):
        from_module(module, preprocess=spec, labels=["cat", "dog", " cat"])


def test_plain_module_mistakes_are_one_sentence_and_one_label_is_a_sigmoid(tmp_path):
    """A module's own failures (a float64 module, one that runs at batch 2 only), empty labels
    and an NHWC layout were tracebacks from torch or numpy; a one-label module scored 1.0 on
    every image (a softmax over one logit); a module dividing its input in place (x.div_(255))
    changed the parity inputs under the exported files, which then missed their gate."""
    torch = pytest.importorskip("torch")
    from vlmedge.errors import UnsupportedModelError, UsageError
    from vlmedge.preprocess.image import ImagePreprocessSpec, load_image, preprocess_images

    spec = ImagePreprocessSpec(size={"height": 16, "width": 16})
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))

    class BatchOfTwo(torch.nn.Module):
        def forward(self, x):
            return linear(x.reshape(2, 3 * 16 * 16))

    float64 = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3)).double()
    cases = [(float64, {}, UnsupportedModelError, r"^The module failed on two \(2, 3, 16, 16\) float32 images"),
             (BatchOfTwo(), {}, UnsupportedModelError, r"^The source model failed on a batch of its parity inputs"),
             (linear, {"labels": []}, UsageError, r"^labels= is empty"),
             (linear, {"preprocess": ImagePreprocessSpec(size={"height": 16, "width": 16}, layout="NHWC")},
              UsageError, r"layout 'NCHW', not 'NHWC'")]
    for module, options, error, words in cases:
        with pytest.raises(error, match=words) as caught:
            vlmedge.export(module, tmp_path / "x", **{"preprocess": spec, "labels": list("abc"), **options})
        assert "\n" not in str(caught.value) and not (tmp_path / "x").exists()

    class Detector(torch.nn.Module):  # one logit, and its input divided in place
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 1))

        def forward(self, x):
            return self.head(x.div_(2))

    detector = Detector()
    raw = ImagePreprocessSpec(size={"height": 16, "width": 16}, do_normalize=False)
    vlmedge.export(detector, tmp_path / "one", preprocess=raw, labels=["defect"])
    image = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = torch.sigmoid(detector(torch.from_numpy(preprocess_images([load_image(image)], raw)))).item()
    (score,) = vlmedge.load(tmp_path / "one").classify(image)
    assert score.label == "defect" and abs(score.score - expected) < 1e-5


def test_unchanged_files_are_not_hashed_again_and_altered_ones_always_are(artifact_copy, monkeypatch, tmp_path):
    """The verified-file memo (vlmedge.user_cache) spares hashing unchanged files on a second
    open; a same-size change is refused even with its mtime set back (the ctime moves)."""
    import vlmedge.artifact as artifact_module

    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(tmp_path / "cache"))
    hashed = []
    real = artifact_module.sha256_file
    monkeypatch.setattr(artifact_module, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    Artifact.open(artifact_copy)
    first = len(hashed)
    assert first == len(json.loads((artifact_copy / "manifest.json").read_text())["files"])
    Artifact.open(artifact_copy)
    assert len(hashed) == first  # nothing hashed again
    Artifact.open(artifact_copy, cache=False)
    assert len(hashed) == 2 * first  # without the memo every file is hashed

    model = artifact_copy / "onnx" / "model.fp32.onnx"
    before = model.stat()
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ArtifactError, match="model.fp32.onnx"):
        Artifact.open(artifact_copy)


def test_a_precision_the_backend_never_runs_says_so_not_export_it(vit_artifact):
    """ONNX bf16 cannot be exported, so "export that precision" was advice that could not be followed."""
    from vlmedge.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match=r"has no bf16 onnx file for graph 'model' \(it has: .*\); "
                                                      r"ONNX Runtime has no bf16 CPU kernels; .*: choose another "
                                                      r"backend or precision\."):
        vlmedge.load(vit_artifact, backend="onnxruntime", precision="bf16")
    with pytest.raises(BackendUnavailableError, match=r"has no fp16 onnx file .*; export that precision"):
        vlmedge.load(vit_artifact, backend="onnxruntime", precision="fp16")


def test_a_memo_another_user_could_write_vouches_for_nothing(artifact_copy, monkeypatch, tmp_path):
    """The verified-file memo was one file in the cache folder, trusted whoever wrote it: in a
    folder users share, another user recorded the manifest's sha256 for an altered model file,
    which a load then handed to the parser unhashed (or a wrong digest refused a good file)."""
    from vlmedge.user_cache import file_identity, memo_name

    cache = tmp_path / "cache"
    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(cache))
    model = artifact_copy / "onnx" / "model.fp32.onnx"
    listed = next(e["sha256"] for e in json.loads((artifact_copy / "manifest.json").read_text())["files"]
                  if e["path"] == "onnx/model.fp32.onnx")
    original = model.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    memo = cache / memo_name()
    cache.mkdir()
    memo.write_text(json.dumps({str(model.resolve()): [file_identity(model.stat()), listed]}))
    memo.chmod(0o666)  # writable by every user
    with pytest.raises(ArtifactError, match=r"onnx/model\.fp32\.onnx in .* does not match the sha256"):
        Artifact.open(artifact_copy)
    if os.geteuid() == 0:  # another user's memo, of mode 0644
        memo.write_text(json.dumps({str(model.resolve()): [file_identity(model.stat()), listed]}))
        memo.chmod(0o644)
        os.chown(memo, 4242, 4242)
        with pytest.raises(ArtifactError, match=r"onnx/model\.fp32\.onnx in .* does not match the sha256"):
            Artifact.open(artifact_copy)
    memo.unlink()
    model.write_bytes(original)
    Artifact.open(artifact_copy)  # the good file: this user's own memo is written private, and trusted
    assert memo.stat().st_mode & 0o077 == 0
    assert json.loads(memo.read_text())[str(model.resolve())][1] == listed

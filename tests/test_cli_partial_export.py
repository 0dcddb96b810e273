"""Partial exports: a variant that misses its gate is left out and shown, the rest is
written, and the command exits 3; --strict / strict=True is all or nothing. Also the
Python API's signatures."""

from __future__ import annotations

import inspect
import json

import pytest

from tests.test_cli import vlmedge_cli

# A gate no int8 file meets: the int8 variant is left out, fp32 is kept.
IMPOSSIBLE_INT8 = "Gate(min_cosine=0.999999999, max_abs=None, min_top1=0.95)"


def test_export_keeps_what_passed_and_records_what_was_dropped(hf_classifier_dir, tmp_path):
    import vlmedge
    from vlmedge.artifact import Artifact
    from vlmedge.errors import ParityError
    from vlmedge.parity import Gate

    gates = {"int8": eval(IMPOSSIBLE_INT8, {"Gate": Gate})}
    out = tmp_path / "partial"
    artifact = vlmedge.export(str(hf_classifier_dir("vit")), out, precision=["fp32", "int8"], gates=gates)
    dropped = artifact.manifest["export"]["dropped"]
    assert [(d["target"], d["precision"]) for d in dropped] == [("onnx", "int8")]
    assert "cosine" in dropped[0]["reason"] and "No artifact was written" not in dropped[0]["reason"]
    reopened = Artifact.open(out)  # verifies every file: nothing extra, nothing missing
    assert {e.get("precision") for e in reopened.files if e["role"] == "model"} == {"fp32"}
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["model.fp32.onnx"]

    result = vlmedge_cli("info", out, columns=80)
    assert result.returncode == 0 and "left out onnx int8" in result.stdout
    # asked for, the left-out precision says why it is not there (it said: export that precision)
    from vlmedge.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match=r"has no int8 onnx file .*; the export left it out \(.*cosine"):
        vlmedge.load(out, precision="int8")

    with pytest.raises(ParityError):  # all or nothing
        vlmedge.export(str(hf_classifier_dir("vit")), tmp_path / "strict", precision=["fp32", "int8"], gates=gates,
                       strict=True)
    assert not (tmp_path / "strict").exists()
    with pytest.raises(ParityError, match="No artifact was written"):  # nothing asked for passed
        vlmedge.export(str(hf_classifier_dir("vit")), tmp_path / "none", precision=["int8"], gates=gates)
    assert not (tmp_path / "none").exists()


def test_cli_exits_3_and_shows_the_dropped_variant(hf_classifier_dir, tmp_path):
    """The real command, with the int8 gate tightened in its own process."""
    prelude = f"from vlmedge.parity import GATES, Gate\nGATES['int8'] = {IMPOSSIBLE_INT8}"
    out = tmp_path / "cli"
    result = vlmedge_cli("export", hf_classifier_dir("vit"), "-o", out, "--precision", "fp32,int8", "--json",
                         prelude=prelude)
    assert result.returncode == 3, result.stderr
    summary = json.loads(result.stdout)
    assert [f["precision"] for f in summary["files"]] == ["fp32"]
    assert summary["dropped"][0]["precision"] == "int8"
    assert "left out onnx int8" in " ".join(result.stderr.split())
    # without --json: a partial export does not say "export success" (a log's reader saw that and not exit 3)
    result = vlmedge_cli("export", hf_classifier_dir("vit"), "-o", tmp_path / "table", "--precision", "fp32,int8",
                         prelude=prelude)
    assert result.returncode == 3 and "export success" not in result.stdout
    assert f"export partial (1 variant(s) left out, listed on stderr): {tmp_path / 'table'}" in result.stdout

    result = vlmedge_cli("export", hf_classifier_dir("vit"), "-o", tmp_path / "strict", "--precision", "fp32,int8",
                         "--strict", "--quiet", prelude=prelude)
    assert result.returncode == 3 and not (tmp_path / "strict").exists()
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_python_api_signatures_and_docs():
    import vlmedge
    from vlmedge.exporters import pipeline
    from vlmedge.tasks import load

    def shape(function):
        return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]

    assert shape(vlmedge.export) == shape(pipeline.export)
    assert shape(vlmedge.load) == shape(load)
    for function in (vlmedge.export, vlmedge.load, vlmedge.bench):
        doc = inspect.getdoc(function)
        assert all(section in doc for section in ("Args:", "Returns:", "Raises:", "Example:")), function.__name__

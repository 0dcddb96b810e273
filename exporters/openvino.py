"""ONNX -> OpenVINO IR: openvino/<graph>.<precision>.xml + .bin, built from the fp32 ONNX file.

- fp32: weights fp32, run with INFERENCE_PRECISION_HINT f32 (the CPU plugin would
  otherwise run it in bf16 on CPUs that have bf16).
- fp16: weights stored fp16 (save_model(compress_to_fp16=True)), run in f16 where the
  device computes in f16, else OpenVINO upcasts and the provider says so.
- bf16: the same fp16-stored weights, run with inference precision bf16 (AVX512-BF16 /
  AMX CPUs, GPUs); a precision the user asks for explicitly, never a silent default.
- int8: NNCF post-training quantization for transformers, calibrated on the export's
  calibration feeds; on a failed gate retried with the first and last layers kept in float
  and min/max activation ranges (asymmetric and symmetric), then with the transformer-
  sensitive ops kept in float too (IgnoredScope), then as int8 weights with float
  activations. On CPUs that compute in bf16 each file is also tried with its float parts in
  bf16; the fastest passing one of a level is kept (of those timed within 5% of it, the
  most accurate). Embedding tables (a text tower's token and position embeddings) are int8
  rows with a scale per row, gathered before they are dequantized, so that the compiled
  model holds no float copy of them.

The inference precision each file was verified with is stored as the manifest entry's
session_options, so `vlmedge.load` and `vlmedge check` run it the same way.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from vlmedge.environment import openvino_telemetry_off
from vlmedge.exporters.quantize import SENSITIVE, Recipe, calibration_rows, run_ladder
from vlmedge.runtimes.openvino import ov, supports_precision  # ov: openvino, imported without its telemetry

# vlmedge precision -> (store weights as fp16, session options)
PLAIN = {
    "fp32": (False, {"inference_precision": "fp32"}),
    "fp16": (True, {"inference_precision": "fp16"}),
    "bf16": (True, {"inference_precision": "bf16"}),
}
# The precision the float parts of an int8 model run in.
INT8_OPTIONS = {"inference_precision": "fp32"}


def convert(base: Path) -> ov.Model:
    """The fp32 ONNX file as an OpenVINO model (OpenVINO's ONNX frontend), its inputs and
    outputs named exactly as in the ONNX graph.

    The frontend gives a port every name its tensor had; where it folded an op next to an
    input (CLIP text's Reshape of input_ids) the port's "any name" can be the op's.
    """
    import onnx

    model = ov.convert_model(str(base))
    graph = onnx.load(str(base), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    outputs = [o.name for o in graph.output]
    for ports, names in ((model.inputs, inputs), (model.outputs, outputs)):
        if len(ports) == len(names):
            for port, name in zip(ports, names):
                if name in port.get_names():
                    port.get_tensor().set_names({name})
    return model


def save(model: ov.Model, xml: Path, compress_to_fp16: bool) -> list[Path]:
    xml.parent.mkdir(parents=True, exist_ok=True)
    _number_made_names_in_order(model)
    ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    return [xml, xml.with_suffix(".bin")]


# How OpenVINO names a node it makes (a converter's constant, a reshape's ShapeOf, a constant
# folded from a Reshape): a type and a counter of the whole process, so the same model saved after
# other work in the process (another precision, an earlier int8 attempt) differed in those names
# alone, and an export's .xml was not the same bytes from one run of the same command to the next.
# The ONNX graph's own names hold "/", ":" or ".", and inputs and outputs keep theirs.
MADE_NAME = re.compile(r"([A-Za-z][A-Za-z0-9]*)_\d+")


def _number_made_names_in_order(model: ov.Model) -> None:
    """Renames the nodes OpenVINO named `<Type>_<counter>` `<Type>_<their place in the model>`."""
    for index, op in enumerate(model.get_ordered_ops()):
        made = MADE_NAME.fullmatch(op.get_friendly_name())
        if made and op.get_type_name() not in ("Parameter", "Result"):
            op.set_friendly_name(f"{made.group(1)}_{index}")


def _build_plain(precision: str, writer: Any, context: Any) -> tuple[str, list[Path], dict[str, Any]]:
    compress, options = PLAIN[precision]
    if precision != "fp32" and not supports_precision(precision):
        context.say(f"[{context.graph.name}] this CPU does not compute in {precision}: the openvino {precision} file "
                    "is verified here in the precision OpenVINO falls back to (see the report's provider)")
    relpath = f"openvino/{context.graph.name}.{precision}.xml"
    files = save(convert(context.base), writer.path(relpath), compress)
    return relpath, files, dict(options)


def build_openvino_fp32(writer: Any, context: Any) -> tuple[str, list[Path], dict[str, Any]]:
    return _build_plain("fp32", writer, context)


def build_openvino_fp16(writer: Any, context: Any) -> tuple[str, list[Path], dict[str, Any]]:
    return _build_plain("fp16", writer, context)


def build_openvino_bf16(writer: Any, context: Any) -> tuple[str, list[Path], dict[str, Any]]:
    return _build_plain("bf16", writer, context)


# --------------------------------------------------------------------------- int8


def _is_weight(output: Any) -> bool:
    """Whether an op input comes from a constant (through Convert / FakeQuantize decompression)."""
    node = output.get_node()
    while node.get_type_name() in ("Convert", "Reshape", "Transpose") and node.get_input_size():
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def layer_names(model: ov.Model) -> tuple[list[str], list[str]]:
    """(first and last weighted layers, MatMuls of two activations) by friendly name."""
    weighted, activation_matmuls = [], []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("MatMul", "Convolution"):
            continue
        inputs = [op.input_value(i) for i in range(op.get_input_size())]
        if any(_is_weight(v) for v in inputs[1:2]):
            weighted.append(op.get_friendly_name())
        elif kind == "MatMul":
            activation_matmuls.append(op.get_friendly_name())
    return list(dict.fromkeys(weighted[:1] + weighted[-1:])), activation_matmuls


def leaving_embeddings(ignored: Any) -> Any:
    """`ignored` (an nncf.IgnoredScope or None) with Gather added: embedding tables are left
    in float for gather_int8_embeddings."""
    import dataclasses

    with openvino_telemetry_off():
        import nncf

    if ignored is None:
        return nncf.IgnoredScope(types=["Gather"], validate=False)
    return dataclasses.replace(ignored, types=[*ignored.types, "Gather"], validate=False)


def _depends_on_inputs(output: Any) -> bool:
    """Whether a value is computed from the model's inputs (else OpenVINO folds it to a constant)."""
    seen, todo = set(), [output.get_node()]
    while todo:
        node = todo.pop()
        if node.get_type_name() == "Parameter":
            return True
        if id(node) not in seen:
            seen.add(id(node))
            todo.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
    return False


def gather_int8_embeddings(model: ov.Model) -> ov.Model:
    """Each embedding table (a float32 Constant of rank 2 whose rows are gathered by indices
    computed from the inputs: a text tower's token and position embeddings; not a table
    gathered by constant indices, as Swin's relative position bias, which compiling folds)
    stored as int8 with a scale per row, the rows gathered first and dequantized after:
    Gather(int8 table) -> Convert -> Multiply by the gathered scales.

    Why not NNCF's own forms: nncf.quantize gives a table one scale for all of it, and
    nncf.compress_weights per-row int8 behind a Convert -> Multiply that the CPU plugin, in a
    model with FakeQuantize ops, folds back into a float table when it compiles (CLIP B/32's
    text tower held 101 MB of float32 for a 25 MB table). Gathered first, the table stays
    int8 in the mapped file and only the rows a call asks for are read."""
    import numpy as np

    opset = ov.opset8
    for gather in [op for op in model.get_ordered_ops() if op.get_type_name() == "Gather"]:
        table, axis = (gather.input_value(i).get_node() for i in (0, 2))
        if (table.get_type_name() != "Constant" or axis.get_type_name() != "Constant"
                or table.get_output_element_type(0) != ov.Type.f32 or len(table.get_output_shape(0)) != 2
                or axis.get_data().item() != 0 or gather.get_attributes().get("batch_dims", 0) != 0
                or not _depends_on_inputs(gather.input_value(1))):
            continue
        rows = table.get_data()
        scales = np.abs(rows).max(axis=1, keepdims=True) / 127
        scales[scales == 0] = 1
        ids = gather.input_value(1)
        picked = opset.gather(opset.constant(np.round(rows / scales).astype(np.int8)), ids, opset.constant(0))
        dequantized = opset.multiply(opset.convert(picked, ov.Type.f32),
                                     opset.gather(opset.constant(scales.astype(np.float32)), ids, opset.constant(0)))
        dequantized.set_friendly_name(gather.get_friendly_name())
        gather.output(0).replace(dequantized.output(0))
    model.validate_nodes_and_infer_types()
    return model


def openvino_int8_recipes(context: Any) -> list[Recipe]:
    """NNCF post-training quantization for transformers, by level:

    0. NNCF's defaults (model_type TRANSFORMER: SmoothQuant, averaged activation ranges);
    1. the first and last layers kept in float and activation ranges from the calibration
       set's global min/max, which no calibration input clips (with and without SmoothQuant;
       without it also as NNCF's performance preset: symmetric activations, whose matrix
       multiplications skip the zero-point correction, ~5% faster on ViT-B/16 with AMX);
    2. also LayerNorm, GELU, Softmax, residual Adds and the attention kept in float;
    3. int8 weights with float activations.
    """
    with openvino_telemetry_off():
        import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    nncf.set_log_level(logging.ERROR)
    calibration, source = calibration_rows(context)
    ends, activation_matmuls = layer_names(convert(context.base))
    calib = {"calibration": {"samples": len(calibration), "source": source}}
    # OpenVINO's names for the ops kept at level 2 (LayerNorm is MVN + Multiply + Add; OpenVINO's
    # ONNX frontend fuses attention into ScaledDotProductAttention)
    kept_types = ["MVN", "Gelu", "Softmax", "Add", "ScaledDotProductAttention"]

    def careful(smooth_quant: bool) -> Any:
        return AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
            smooth_quant_alphas=AdvancedSmoothQuantParameters() if smooth_quant else AdvancedSmoothQuantParameters(matmul=-1))

    def quantize(ignored: nncf.IgnoredScope | None = None, advanced: Any = None, preset: Any = None):
        def build(folder: Path, name: str):
            model = nncf.quantize(convert(context.base), nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(calibration), ignored_scope=leaving_embeddings(ignored),
                                  advanced_parameters=advanced, preset=preset)
            return save(gather_int8_embeddings(model), folder / name, compress_to_fp16=False), dict(INT8_OPTIONS)
        return build

    def weights_only(folder: Path, name: str):
        model = nncf.compress_weights(convert(context.base), mode=nncf.CompressWeightsMode.INT8_ASYM)
        return save(model, folder / name, compress_to_fp16=False), dict(INT8_OPTIONS)

    norm = ["LayerNorm (MVN)", "Gelu", "Softmax"]
    level2_names = ends + activation_matmuls
    keep_ends = nncf.IgnoredScope(names=ends, validate=False)
    # On CPUs that compute in bf16 (AMX, AVX512-BF16) the parts left in float may run in bf16,
    # as OpenVINO's own default would: faster, and judged by the same int8 gate.
    bf16 = ({"inference_precision": "bf16"},) if supports_precision("bf16") else ()
    return [
        Recipe("nncf-transformer", 0, {"op_types": norm, "nodes": []}, quantize(), {**calib}, bf16),
        # SmoothQuant with symmetric activations failed ViT-B/16's gate (cosine 0.975): not tried
        *[Recipe("nncf-transformer", 1, {"op_types": norm, "nodes": ends}, quantize(keep_ends, careful(sq), preset),
                 {**calib, "activation_ranges": "minmax", "smooth_quant": sq, "ignored_scope": {"names": ends},
                  **({"preset": "performance"} if preset else {})}, bf16)
          for sq, preset in ((True, None), (False, None), (False, nncf.QuantizationPreset.PERFORMANCE))],
        Recipe("nncf-transformer", 2, {"op_types": SENSITIVE[:5], "nodes": ends},
               quantize(nncf.IgnoredScope(names=level2_names, types=kept_types, validate=False), careful(False)),
               {**calib, "activation_ranges": "minmax", "smooth_quant": False,
                "ignored_scope": {"names": level2_names, "types": kept_types}}, bf16),
        Recipe("nncf-weights-only", 3, {"op_types": ["all activations (int8 weights only)"], "nodes": []},
               weights_only, {}, bf16),
    ]


def build_openvino_int8(writer: Any, context: Any) -> tuple[str, list[Path], dict[str, Any]]:
    relpath = f"openvino/{context.graph.name}.int8.xml"
    return run_ladder(writer, context, "openvino", relpath, openvino_int8_recipes(context))

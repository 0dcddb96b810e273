"""vlmedge: export vision, vision-language and audio transformers to ONNX, OpenVINO and
TensorRT, verify them against their source, and serve them without PyTorch."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

# `vlmedge.bench` is the function, not the subpackage: importing the subpackage first and
# binding the function after means a later `import vlmedge.bench.x` finds the package in
# sys.modules and never rebinds `vlmedge.bench`, so `vlmedge.bench(...)` stays the function.
# The package imports only the stdlib at module level; measuring loads when bench() runs.
from vlmedge.bench import bench
from vlmedge.errors import VlmedgeError
from vlmedge.version import __version__


# ONNX Runtime (1.32 on Linux) otherwise records every session it opens, with the model's
# file name, in ~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db: loading an
# artifact must write nothing outside it. Read when onnxruntime is imported, so set here;
# an explicit ORT_DISABLE_TELEMETRY=0 from the user is kept.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def load(path: str | os.PathLike, backend: str = "auto", device: str = "cpu", precision: str | None = None,
         decode_workers: int | None = None, cache: bool | None = None, batch_size: int | None = None,
         **options: Any):
    """Loads an artifact folder and returns the pipeline of its task, without torch.

    Args:
        path: the artifact folder written by `export` (CLI: the ARTIFACT argument).
        backend: "auto" (the fastest backend present for the device) or a backend name:
            "onnxruntime", "openvino", "tensorrt" (CLI: --backend). Backends read the files of
            their target: onnxruntime the "onnx" files, openvino the "openvino" ones.
        device: "cpu", "cuda", or a backend's own device name such as "GPU" or "NPU" (CLI: --device).
        precision: "fp32", "fp16", "bf16" or "int8"; None takes the fastest file that passed
            its parity gate, or the widest precision within 10% of it (CLI: --precision).
        decode_workers: threads that decode and preprocess the inputs of a list call while the
            model runs (None: min(4, CPUs); 1: serially); the pipeline's ``decode_workers``.
        cache: keep the backend's compiled model in the user cache folder ($VLMEDGE_CACHE_DIR,
            else $XDG_CACHE_HOME/vlmedge or ~/.cache/vlmedge) so the next load skips compiling;
            None: on unless the environment sets VLMEDGE_NO_CACHE=1. Entries are keyed by the
            files' hashes, backend version, CPU and options, and verified before use. The
            artifact's files are then not hashed again while unchanged (vlmedge.user_cache).
        batch_size: the most inputs (images, captions, audio windows) handed to the backend in
            one call; longer lists run in chunks of this many (None: 32). Smaller saves memory
            on a small device, larger may run faster on a GPU; the pipeline's ``batch_size``.
        **options: the session options of the backend that runs the files, e.g. threads=4:
            onnxruntime takes threads and optimization, openvino threads, performance_hint
            and inference_precision (`vlmedge formats` says what each sets).

    Returns:
        The task's pipeline (vlmedge.registry names them): ImageClassifier (`classify`),
        ImageEncoder (`embed`), Clip (`embed_images`, `embed_texts`, `zero_shot`) or
        AudioTagger (`tag`). The CLI's `predict` runs the first of these the task declares
        for "predict". `.model.backend`, `.model.precision` and `.model.provider` say what runs;
        `.close()`, or a `with` block, frees the model at once.

    Raises:
        ArtifactError: the folder is not a readable, untampered vlmedge artifact.
        BackendUnavailableError: the backend is not installed or cannot run here.
        UsageError: an argument outside its choices: a precision, a session option the chosen
            backend does not take, a keyword vlmedge.load does not take.

    Example:
        >>> import vlmedge
        >>> classifier = vlmedge.load("out/shapes-vit", backend="onnxruntime")  # doctest: +SKIP
        >>> classifier.classify(["exporters/sample_data/red-circle.jpg"], top_k=3)  # doctest: +SKIP
    """
    from vlmedge.tasks import load as _load

    return _load(path, backend=backend, device=device, precision=precision, decode_workers=decode_workers, cache=cache,
                 batch_size=batch_size, **options)


def export(model: Any, out: str | os.PathLike, to: str | Iterable[str] = ("onnx",),
           precision: str | Iterable[str] = ("fp32",),
           task: str | None = None, opset: int = 18, gates: dict[str, Any] | None = None,
           calibration: Any = None, progress: Callable[[str], None] | None = None,
           calibration_size: int = 300, evaluation: str | os.PathLike | None = None, strict: bool = False,
           **source_options: Any):
    """Exports a model to a verified artifact folder (needs the 'export' extra: torch,
    transformers, onnx; imported only when this runs).

    Every file is compared with the source model on stored inputs and must pass the parity
    gate of its precision (vlmedge.parity.GATES). A variant that misses it is left out and
    recorded in `artifact.manifest["export"]["dropped"]` with the figure that failed, unless
    `strict`; the fp32 ONNX reference must always pass.

    Args:
        model: "builtin:NAME", a Hugging Face folder or cached model id, or a torch.nn.Module
            (then pass preprocess= and labels=) (CLI: the MODEL argument).
        out: the artifact folder; an existing artifact there is replaced only on success
            (CLI: -o/--output/--out).
        to: targets, from runtimes.base.BACKENDS: "onnx", "openvino", "tensorrt", as a list,
            one name or names joined by commas; the fp32 ONNX file is always included (CLI:
            --to onnx,openvino).
        precision: "fp32", "fp16", "bf16", "int8", given the same ways (CLI: --precision fp32,int8).
        task: the task when the architecture does not imply it, a name of
            vlmedge.registry.TASKS (CLI: --task).
        opset: ONNX opset, 17 or newer (CLI: --opset).
        gates: precision -> vlmedge.parity.Gate, replacing the defaults.
        calibration: int8 calibration data: a folder of images or audio files, a .txt of
            captions, or per graph the preprocessed inputs (CLI: --calibration).
        progress: called with a line of text at every step.
        calibration_size: how many calibration items to use (CLI: --calibration-size).
        evaluation: a folder with one sub-folder of files per label; every file's accuracy
            is judged by the gate (CLI: --eval).
        strict: all or nothing: any variant missing its gate fails the export (CLI: --strict).
        **source_options: options of the source, e.g. image_size=448 (CLI: --image-size).

    Returns:
        The written vlmedge.artifact.Artifact (`.root`, `.manifest`, `.files`).

    Raises:
        ExportError: a target, precision or opset that cannot be built, or a failed step;
            nothing is written.
        ParityError: the fp32 reference, every requested variant, or (strict) any variant
            missed its parity gate; nothing is written.
        ModelNotFoundError, UnsupportedModelError: the model cannot be found or exported.
        BackendUnavailableError: the 'export' extra (torch, transformers, onnx) is not installed.

    Example:
        >>> import vlmedge
        >>> artifact = vlmedge.export("builtin:shapes-vit", "out/shapes-vit", to=["onnx", "openvino"],
        ...                           precision=["fp32", "int8"])  # doctest: +SKIP
        >>> artifact.manifest["export"].get("dropped", [])  # doctest: +SKIP
        []
    """
    from vlmedge.environment import export_extra_missing

    try:
        from vlmedge.exporters.pipeline import export as _export

        return _export(model, out, to=to, precision=precision, task=task, opset=opset, gates=gates,
                       calibration=calibration, progress=progress, calibration_size=calibration_size,
                       evaluation=evaluation, strict=strict, **source_options)
    except ModuleNotFoundError as exc:  # a runtime-only install: at import, or where a step imports its package
        missing = export_extra_missing(exc)
        if missing is None:
            raise
        raise missing from None


__all__ = ["VlmedgeError", "__version__", "bench", "export", "load"]

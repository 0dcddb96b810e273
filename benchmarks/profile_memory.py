"""What bounds the memory of an OpenVINO load: the process's anonymous memory (RssAnon) and its
RSS after each step vlmedge's OpenVINO session takes (runtimes/openvino.py, a load without the
compiled-model cache): the CPU plugin loaded, the IR read with its weights over vlmedge's
mapping of the .bin, compiled, the first call. Each file in a fresh process; beside it, the
bytes of the weights the compiled graph holds, so that what OpenVINO keeps beyond the packed
weights, and the plugin's own code pages, can be read off across models of different sizes.

    .venv/bin/python benchmarks/run_suite.py          # exports the suite's models (into benchmarks/.work/full)
    .venv/bin/python benchmarks/profile_memory.py     # ~1 min
    .venv/bin/python benchmarks/profile_memory.py --work /tmp/vlmedge-bench-quantization-models \
        /tmp/vlmedge-bench-quantization                 # quantization_models.py's and quantization.py's

Writes benchmarks/results/profile-memory-<machine>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

MB = 1 << 20


def memory() -> dict[str, float]:
    """MB: anonymous memory, RSS, and the resident pages of OpenVINO's own libraries."""
    from vlmedge.bench.timing import Memory

    libraries, current = 0, ""
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and not line.startswith(("Rss:", "Size:")):
            current = fields[5] if len(fields) > 5 else ""
        elif line.startswith("Rss:") and "/openvino/" in current and ".so" in current:
            libraries += int(fields[1]) * 1024
    return {"anon": Memory.status("RssAnon"), "rss": Memory.status("VmRSS"), "openvino_code": libraries / MB}


def child(xml: Path, precision: str) -> dict[str, Any]:
    """The load's steps in this (fresh) process, as OpenVinoSession._compile_mapped takes them;
    the peak through `vlmedge bench`'s own probe (VmHWM reset after the imports), as
    benchmarks/cold_start.py takes it."""
    import numpy as np
    import openvino as ov

    from profile_int8 import batch_one_feeds
    from vlmedge.bench.timing import Memory
    from vlmedge.runtimes.mapped import MappedFile
    from vlmedge.runtimes.openvino import core

    probe = Memory()
    baseline = probe.start()
    steps = {"imports": memory()}
    core().get_versions("CPU")  # loads the CPU plugin's library
    steps["plugin loaded"] = memory()
    mapped = MappedFile(xml.with_suffix(".bin"))
    with mapped.handing_back_pages():
        model = core().read_model(xml.read_text(encoding="utf-8"), ov.Tensor(mapped.array(), shared_memory=True))
        steps["IR read"] = memory()
        compiled = core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                       "INFERENCE_PRECISION_HINT": precision})
        del model
    steps["compiled"] = memory()
    request = compiled.create_infer_request()
    with mapped.handing_back_pages():
        request.infer(batch_one_feeds(compiled, 77))
    steps["first call"] = memory()
    peak_over_imports = probe.increase(baseline)
    weights = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        if op.get_rt_info()["layerType"].astype(str) == "Const" and op.get_output_partial_shape(0).is_static:
            shape = op.get_output_partial_shape(0)
            weights += int(np.prod([d.get_length() for d in shape])) * op.get_output_element_type(0).size
    return {"steps": steps, "peak_over_imports": peak_over_imports, "graph_weights_mb": weights / MB}


def openvino_files(work: Path) -> list[tuple[str, Path, Path]]:
    """(model, artifact, IR file) for the fp32 and int8 files of every artifact in `work`:
    <model>/artifact (run_suite.py, quantization_models.py) or <model> itself (quantization.py)."""
    found = []
    for manifest in sorted([*work.glob("*/artifact/manifest.json"), *work.glob("*/manifest.json")]):
        artifact = manifest.parent
        model = (artifact.parent if artifact.name == "artifact" else artifact).name
        for xml in sorted((artifact / "openvino").glob("*.xml")):
            if xml.stem.endswith((".fp32", ".int8")):
                found.append((model, artifact, xml))
    return found


def measure(artifact: Path, xml: Path) -> dict[str, Any]:
    from profile_int8 import float_precision

    precision = float_precision(artifact, xml)
    done = subprocess.run([sys.executable, __file__, "--child", str(xml), precision], capture_output=True, text=True,
                          check=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    steps = row["steps"]
    base = steps["plugin loaded"]
    row.update(file=f"{xml.parent.name}/{xml.name}", precision=precision,
               file_mb=(xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / MB,
               anon_added={name: steps[name]["anon"] - base["anon"] for name in ("IR read", "compiled", "first call")},
               plugin_load={key: base[key] - steps["imports"][key] for key in ("anon", "openvino_code")},
               code_added=steps["first call"]["openvino_code"] - base["openvino_code"])
    row["beyond_weights"] = row["anon_added"]["first call"] - row["graph_weights_mb"]
    return row


def markdown(rows: list[dict[str, Any]], machine: str, load: tuple[float, float]) -> str:
    lines = [f"# What an OpenVINO load holds ({machine})", "",
             "`python benchmarks/profile_memory.py`: each file loaded in a fresh process the way vlmedge's "
             "OpenVINO session loads it without its compiled-model cache (the IR read over vlmedge's mapping of "
             "the weights, whose pages go back while the plugin packs them), latency hint, the float parts in the "
             f"precision the export verified. Load average {load[0]:.2f} at the start, {load[1]:.2f} at the end. "
             "MB; anonymous memory is added over that after the CPU plugin's library was loaded; *weights* are "
             "the bytes of the compiled graph's constants (the packed weights, in the precision they run in); "
             "*code* is the resident pages of OpenVINO's libraries added by compiling and the first call; the "
             "peak RSS is over the RSS after the imports (as benchmarks/cold_start.py counts it: the plugin's "
             "library loading and all).", "",
             "| model | file | MB | anon: IR read | compiled | first call | weights | anon beyond the weights "
             "| code | peak RSS | x file |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        added = row["anon_added"]
        lines.append(f"| {row['model']} | {row['file']} ({row['precision']}) | {row['file_mb']:.1f} | "
                     f"+{added['IR read']:.0f} | +{added['compiled']:.0f} | +{added['first call']:.0f} | "
                     f"{row['graph_weights_mb']:.0f} | {row['beyond_weights']:.0f} | +{row['code_added']:.0f} | "
                     f"{row['peak_over_imports']:.0f} | {row['peak_over_imports'] / row['file_mb']:.2f}x |")
    fixed = statistics.median(row["beyond_weights"] for row in rows)
    code = statistics.median(row["code_added"] + row["plugin_load"]["openvino_code"] for row in rows)
    plugin_anon = statistics.median(row["plugin_load"]["anon"] for row in rows)
    fixed_total = fixed + plugin_anon + code
    under = [f"{row['model']} {row['file'].split('/')[-1]}" for row in rows if row["peak_over_imports"] <= 1.5 * row["file_mb"]]
    lines += ["", f"Whatever the model, OpenVINO holds about **{fixed:.0f} MB** of anonymous memory beyond the "
              f"weights it packs (the median over these files; an embedding table is gathered from the mapped "
              f"file, not packed, hence CLIP text's fp32 row below zero), its CPU plugin's library adds about "
              f"{plugin_anon:.0f} MB when it loads, and its libraries' code about **{code:.0f} MB** of resident "
              f"pages once a model has compiled and run: ~{fixed_total:.0f} MB whatever the model. The weights "
              "pack to about the file's size (fp32 files run in f32, int8 files stay int8), so a load peaks at "
              f"about the file plus ~{fixed_total:.0f} MB and stays under 1.5x the file only from about "
              f"{2 * fixed_total:.0f} MB of file up. Under 1.5x here: {', '.join(under) or 'none'}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(child(Path(sys.argv[2]), sys.argv[3])))
        return 0
    from quantization import machine_name

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, nargs="+", default=[HERE / ".work" / "full"],
                        help="folders of artifacts: run_suite.py's (its --work/full), quantization_models.py's --work, quantization.py's")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    files = [found for work in args.work for found in openvino_files(work)]
    if not files:
        raise SystemExit(f"No OpenVINO files in {', '.join(map(str, args.work))}: run benchmarks/run_suite.py first.")
    load_start = os.getloadavg()[0]
    rows = []
    for model, artifact, xml in files:
        print(f"{model}: {xml.name}", flush=True)
        rows.append({"model": model, **measure(artifact, xml)})
    text = markdown(rows, machine_name(), (load_start, os.getloadavg()[0]))
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"profile-memory-{machine_name()}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({"machine": machine_name(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The machine a benchmark ran on: CPU, memory, OS, package versions and NVIDIA GPUs; and
what of vlmedge's pip extras is installed here.

Stdlib only, and no backend is imported to learn its version (importlib.metadata reads
the installed distribution), so describing the machine never changes what is measured.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass, field
from typing import Iterator

from vlmedge.errors import BackendUnavailableError

PACKAGES = ("vlmedge", "numpy", "torch", "transformers", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt")
# The CPU features that decide which kernels the backends pick: wide vectors, int8 dot
# products, bf16/fp16 arithmetic and AMX tiles (int8 and bf16 matrix units).
COMPUTE_FLAGS = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                           "amx_tile", "amx_int8", "amx_bf16"})


@dataclass
class Gpu:
    """One NVIDIA GPU as nvidia-smi reports it."""

    name: str
    driver: str
    compute_capability: str
    memory_mb: int | None


@dataclass
class Environment:
    """Where a benchmark ran. `cores_available` is what this process may use (CPU affinity,
    which containers restrict); `load_average` is the 1/5/15-minute load when it started."""

    cpu_model: str
    cpu_vendor: str
    cores_logical: int
    cores_physical: int | None
    cores_available: int
    memory_gb: float | None
    os: str
    python: str
    versions: dict[str, str]
    gpus: list[Gpu] = field(default_factory=list)
    load_average: list[float] = field(default_factory=list)
    cpu_flags: list[str] = field(default_factory=list)

    @property
    def machine_name(self) -> str:
        """A file-name-safe label for this kind of machine, e.g. 'intel-xeon-processor-2c', or
        'intel-xeon-processor-amx-2c' where the CPU has AMX: CPUs sold under one name differ
        by that unit, and int8/bf16 figures with and without it are different machines."""
        model = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$", " ", self.cpu_model.lower())
        slug = "-".join(re.findall(r"[a-z0-9]+", model))[:48] or platform.machine().lower()
        amx = "-amx" if "amx_int8" in self.cpu_flags else ""
        gpu = "-" + "-".join(re.findall(r"[a-z0-9]+", self.gpus[0].name.lower()))[:32] if self.gpus else ""
        return f"{slug}{amx}-{self.cores_available}c{gpu}"

    def summary(self) -> str:
        """One line for a table caption."""
        parts = [f"{self.cpu_model} ({self.cores_available} of {self.cores_logical} logical cores available)"]
        if self.memory_gb:
            parts.append(f"{self.memory_gb:.0f} GB RAM")
        parts += [self.os, f"Python {self.python}"]
        parts += [f"{gpu.name} (driver {gpu.driver}, sm {gpu.compute_capability})" for gpu in self.gpus]
        return "; ".join(parts)


def cpuinfo() -> dict[str, str]:
    """The fields of the first processor in /proc/cpuinfo (it describes them all); {} elsewhere."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                found.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return found


def cpu_key() -> dict[str, str]:
    """What identifies this CPU to a compiler: architecture, model name and a hash of its
    feature flags (a compiled model may use any instruction the CPU it was built on has)."""
    fields = cpuinfo()
    model = fields.get("model name") or ":".join(
        fields.get(k, "") for k in ("CPU implementer", "CPU part", "CPU variant")).strip(":") or platform.processor()
    flags = " ".join(sorted(_feature_flags(fields)))
    return {"machine": platform.machine(), "model": model,
            "flags": hashlib.sha256(flags.encode()).hexdigest()[:16]}


def _feature_flags(fields: dict[str, str]) -> list[str]:
    """Every feature flag of /proc/cpuinfo's fields ("flags" on x86, "Features" on Arm)."""
    return (fields.get("flags") or fields.get("Features") or "").split()


def cpu_flags(fields: dict[str, str] | None = None) -> list[str]:
    """This CPU's COMPUTE_FLAGS, sorted (fields: /proc/cpuinfo's, when already read)."""
    return sorted(COMPUTE_FLAGS.intersection(_feature_flags(cpuinfo() if fields is None else fields)))


def _core_of_each_cpu() -> dict[int, tuple[str | None, str]]:
    """Each logical CPU's (package, core) pair, from /proc/cpuinfo; {} where it does not say."""
    cores: dict[int, tuple[str | None, str]] = {}
    cpu, package = None, None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu = int(value) if value.isdigit() else None
                elif key == "physical id":
                    package = value
                elif key == "core id" and cpu is not None:
                    cores[cpu] = (package, value)
    except OSError:
        return {}
    return cores


def _physical_cores() -> int | None:
    """Distinct (package, core) pairs in /proc/cpuinfo; None where it does not say."""
    return len(set(_core_of_each_cpu().values())) or None


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the logical core count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_physical_cores() -> int:
    """The physical cores among the CPUs this process may run on (a core's hyperthreads count
    once), else available_cores() where the system does not say: how many compute threads a
    backend runs. ONNX Runtime's own default is one per physical core of the whole machine,
    whatever the affinity (taskset, a container's cpuset), and threads beyond the allowed
    CPUs only take turns on them (half the speed on one CPU of two)."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return available_cores()
    cores = _core_of_each_cpu()
    if not allowed <= cores.keys():
        return len(allowed)
    return len({cores[cpu] for cpu in allowed})


def gpus() -> list[Gpu]:
    """NVIDIA GPUs from nvidia-smi, or none when it is absent or fails."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    import subprocess  # here, not at the top: a load never asks for GPUs

    try:
        out = subprocess.run([smi, "--query-gpu=name,driver_version,compute_cap,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) >= 4:
            memory = int(cells[3]) if cells[3].isdigit() else None
            found.append(Gpu(name=cells[0], driver=cells[1], compute_capability=cells[2], memory_mb=memory))
    return found


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    import importlib.metadata  # here, not at the top: a load reads cpu_key() and needs none of it (~20 ms)

    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def describe() -> Environment:
    """The Environment of this process, now."""
    info = cpuinfo()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = []
    return Environment(
        cpu_model=info.get("model name") or platform.processor() or platform.machine(),
        cpu_vendor=info.get("vendor_id", ""),
        cores_logical=os.cpu_count() or 1,
        cores_physical=_physical_cores(),
        cores_available=available_cores(),
        memory_gb=_memory_gb(),
        os=platform.platform(),
        python=platform.python_version(),
        versions=package_versions(),
        gpus=gpus(),
        load_average=load,
        cpu_flags=cpu_flags(info),
    )


def extra_packages(extra: str) -> list[str]:
    """The distributions the pip extra `vlmedge[extra]` brings, from the installed metadata."""
    import importlib.metadata

    try:
        requirements = importlib.metadata.requires("vlmedge") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    marker = re.compile(r"extra\s*==\s*['\"]" + re.escape(extra) + r"['\"]")
    return [re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0] for r in requirements if marker.search(r)]


# Modules whose distribution (what pip installs) has another name.
DISTRIBUTIONS = {"PIL": "pillow", "multipart": "python-multipart", "prometheus_client": "prometheus-client",
                 "google": "protobuf"}


def distribution_of(module: str) -> str:
    """The pip distribution that brings `module` (a dotted name: its top level counts)."""
    root = module.split(".")[0]
    return DISTRIBUTIONS.get(root, root)


def requirement(package: str) -> str | None:
    """vlmedge's requirement on the distribution `package` as its installed metadata declares
    it ("onnxruntime>=1.24"), among its core requirements and its extras' but the export
    extra's; None if it has none."""
    import importlib.metadata

    try:
        requirements = importlib.metadata.requires("vlmedge") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for declared in requirements:
        spec, _, marker = declared.partition(";")
        if re.split(r"[\s<>=!~\[(]", spec, maxsplit=1)[0].lower() == package.lower() and "export" not in marker:
            return spec.strip()
    return None


def dependency_missing(exc: ModuleNotFoundError) -> BackendUnavailableError | None:
    """The sentence for a module of vlmedge's own requirements (see `requirement`; the export
    extra's: export_extra_missing) that could not be imported: a broken install, said with the
    pip command that mends it; None for any other module."""
    module = (exc.name or "").split(".")[0]
    package = distribution_of(module)
    spec = requirement(package) if module else None
    if spec is None:
        return None
    return BackendUnavailableError(f"vlmedge cannot import {module} (its requirement {package} is not installed, or "
                                   f"broken); install it with: pip install '{spec}'.")


def export_extra_missing(exc: ModuleNotFoundError) -> BackendUnavailableError | None:
    """The sentence for a package of the export extra that an export step could not import
    (torch, transformers, onnx, NNCF ...), or None for another module."""
    cause: BaseException | None = exc
    while cause is not None and not getattr(cause, "name", None):  # transformers' lazy imports wrap the real one
        cause = cause.__cause__ or cause.__context__
    package = distribution_of(getattr(cause, "name", None) or "")
    packages = extra_packages("export")
    if packages and package not in packages:
        return None
    return BackendUnavailableError(f"Exporting needs the 'export' extra, and its {package or 'packages are'} "
                                   f"{'is ' if package else ''}not installed; install it with: pip install 'vlmedge[export]'.")


@contextlib.contextmanager
def openvino_telemetry_off() -> Iterator[None]:
    """Imports within it see no openvino_telemetry, so OpenVINO and NNCF take their own stubs:
    with it, `import openvino` writes a client id and usage counts under ~/intel, sends a usage
    event and leaves a thread behind, and loading an artifact must write nothing outside it
    (ONNX Runtime's own telemetry is turned off in vlmedge/__init__.py). A process that has
    imported openvino_telemetry itself keeps it."""
    if "openvino_telemetry" in sys.modules:
        yield
        return
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # the import system's "not found"
    try:
        yield
    finally:
        if "openvino_telemetry" in sys.modules and sys.modules["openvino_telemetry"] is None:
            del sys.modules["openvino_telemetry"]


def mounts() -> dict[str, str]:
    """This process's mount points and their file system types, from /proc/self/mountinfo (the
    later of two mounts at one point wins, as it hides the earlier); {} where there is none."""
    table: dict[str, str] = {}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as lines:
            for line in lines:
                fields, _, after = line.partition(" - ")
                point = fields.split()[4]  # space, tab, newline and backslash written in octal
                table[re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)] = after.split()[0]
    except (OSError, IndexError):  # not Linux, or a line of another form
        return {}
    return table

"""What a benchmark records about its machine: CPU, GPU peak, package versions, commit."""

import platform
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Dense (no sparsity) bfloat16 tensor-core peak TFLOP/s from the vendor data
# sheets, matched in this order against torch.cuda.get_device_name().
GPU_PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),  # also GH200
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("RTX 6000 Ada", 364.2),
    ("RTX A6000", 154.8),
)

PACKAGES = (
    "keras-maxvit",
    "keras",
    "jax",
    "jaxlib",
    "tensorflow",
    "tf-keras",
    "torch",
    "torchvision",
    "timm",
    "keras-cv-attention-models",
    "numpy",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_state() -> dict:
    def git(*args):
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        return out.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {}


def versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def gpu_peak_tflops(name: str) -> float | None:
    for key, peak in GPU_PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None

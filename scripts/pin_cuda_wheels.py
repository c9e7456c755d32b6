#!/usr/bin/env python3
"""Pins the NVIDIA runtime wheels of meshtrain's CUDA 12 and 13 installs.

Writes crates/pjrt/src/install/cuda_pins.rs: for each CUDA major, the
plugin wheel (jax-cudaNN-pjrt) and every wheel named by the `with-cuda`
extra of the matching jax-cudaNN-plugin wheel, each with its exact file
name, sha256 and size, as `meshtrain setup cuda12|cuda13` installs them.

Names come from the plugin wheel's own metadata (Requires-Dist lines with
`extra == "with-cuda"`). Versions: the libraries released with the CUDA
toolkit follow the toolkit minor release the plugin was built against
(PREFIX below: CUDA 12.9 and CUDA 13.0, read from the plugin's
`_versions` module: cuda_runtime_build_version 12090 / 13000, cuBLAS
120901 / 130000, cuFFT 11401 / 12000, cuSOLVER 11705 / 12003, cuSPARSE
12510 / 12602), newest patch first; cuDNN, NCCL and NVSHMEM, released on
their own, take the newest release of their major. Each choice must meet
the with-cuda bound, and every wheel's own requirements must be met by
the chosen set (checked here).

Only pip is used to reach the package index (`pip download`). The wheels
land in --dest (default /tmp/meshtrain-cuda-wheels), which can then serve
as MESHTRAIN_WHEELHOUSE for an offline install.

Not run by CI. Usage: python3 scripts/pin_cuda_wheels.py [--dest DIR]
"""
import argparse
import datetime
import hashlib
import os
import re
import subprocess
import sys
import zipfile

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.version import Version

PLUGIN_VERSION = "0.12.0.1"
# Tags pip is asked for; the chosen file's own tag is what gets pinned.
# (pip matches --platform tags exactly; the plugins need glibc 2.27 anyway.)
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(28, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
PYTHON = "3.12"  # the plugin wheels need >= 3.12; the NVIDIA wheels are py3-none

PREFIX = {
    12: {
        "nvidia-cublas-cu12": "12.9.",
        "nvidia-cuda-cupti-cu12": "12.9.",
        "nvidia-cuda-nvcc-cu12": "12.9.",
        "nvidia-cuda-runtime-cu12": "12.9.",
        "nvidia-cuda-nvrtc-cu12": "12.9.",
        "nvidia-nvjitlink-cu12": "12.9.",
        "nvidia-cufft-cu12": "11.4.",
        "nvidia-cusolver-cu12": "11.7.",
        "nvidia-cusparse-cu12": "12.5.",
        "nvidia-cudnn-cu12": "9.",
        "nvidia-nccl-cu12": "2.",
        "nvidia-nvshmem-cu12": "3.",
    },
    13: {
        "nvidia-cublas": "13.0.",
        "nvidia-cuda-cupti": "13.0.",
        "nvidia-cuda-nvcc": "13.0.",
        "nvidia-cuda-runtime": "13.0.",
        "nvidia-cuda-nvrtc": "13.0.",
        "nvidia-nvjitlink": "13.0.",
        "nvidia-nvvm": "13.0.",
        "nvidia-cufft": "12.0.",
        "nvidia-cusolver": "12.0.",
        "nvidia-cusparse": "12.6.",
        "nvidia-cudnn-cu13": "9.",
        "nvidia-nccl-cu13": "2.",
        "nvidia-nvshmem-cu13": "3.",
    },
}


def pip_download(dest, specs):
    args = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--python-version", PYTHON, "-d", dest]
    for p in PLATFORMS:
        args += ["--platform", p]
    subprocess.run(args + specs, check=True, stdout=sys.stderr)


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_of(dest, name, version=None):
    """The wheel in dest for `name` (and `version`), newest first."""
    found = []
    for f in os.listdir(dest):
        if not f.endswith(".whl"):
            continue
        dist, ver = f.split("-")[:2]
        if norm(dist) == norm(name) and (version is None or ver == version):
            found.append((Version(ver), f))
    if not found:
        sys.exit(f"no wheel of {name} {version or ''} in {dest}")
    return max(found)[1]


def metadata(path):
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return z.read(meta).decode()


def requires(meta, extra=None):
    out = []
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        env = {"extra": extra or "", "sys_platform": "linux", "platform_system": "Linux",
               "platform_machine": "x86_64", "python_version": PYTHON}
        if req.marker is None or req.marker.evaluate(env):
            if extra is None or (req.marker is not None and "extra" in str(req.marker)):
                out.append(req)
    return out


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pin(major, dest):
    plugin = f"jax-cuda{major}-plugin"
    pjrt = f"jax-cuda{major}-pjrt"
    pip_download(dest, [f"{plugin}=={PLUGIN_VERSION}", f"{pjrt}=={PLUGIN_VERSION}"])
    with_cuda = requires(metadata(os.path.join(dest, wheel_of(dest, plugin, PLUGIN_VERSION))),
                         "with-cuda")
    names = {norm(r.name) for r in with_cuda}
    if names != set(PREFIX[major]):
        sys.exit(f"with-cuda names {sorted(names)} differ from PREFIX {sorted(PREFIX[major])}")
    specs = [r.name + ",".join(([str(r.specifier)] if str(r.specifier) else [])
                               + [f"=={PREFIX[major][norm(r.name)]}*"]) for r in with_cuda]
    pip_download(dest, specs)
    chosen = {norm(pjrt): wheel_of(dest, pjrt, PLUGIN_VERSION)}
    for r in with_cuda:
        f = wheel_of(dest, r.name)
        v = f.split("-")[1]
        if not v.startswith(PREFIX[major][norm(r.name)]) or v not in r.specifier:
            sys.exit(f"{f}: not within {r} and {PREFIX[major][norm(r.name)]}*")
        chosen[norm(r.name)] = f
    # Close over the wheels' own requirements (NVSHMEM needs CCCL, say):
    # a missing one is added (CUDA toolkit packages from the plugin's CUDA
    # release), and every requirement must be met by the set.
    release = PREFIX[major][f"nvidia-cuda-runtime{'-cu12' if major == 12 else ''}"]
    while True:
        versions = {n: f.split("-")[1] for n, f in chosen.items()}
        missing = []
        for n, f in sorted(chosen.items()):
            for req in requires(metadata(os.path.join(dest, f))):
                have = versions.get(norm(req.name))
                if have is None:
                    missing.append(req)
                elif have not in req.specifier:
                    sys.exit(f"{f} requires {req}; the set has {have}")
        if not missing:
            break
        for req in missing:
            prefix = release if norm(req.name).startswith("nvidia-cuda-") else ""
            parts = [str(req.specifier)] if str(req.specifier) else []
            parts += [f"=={prefix}*"] if prefix else []
            spec = req.name + ",".join(parts)
            print(f"adding {spec} (a requirement of the set)", file=sys.stderr)
            pip_download(dest, [spec])
            chosen[norm(req.name)] = wheel_of(dest, req.name)
    rows = []
    for n, f in sorted(chosen.items()):
        p = os.path.join(dest, f)
        rows.append((n, versions[n], f, sha256(p), os.path.getsize(p)))
    return rows


def rust(rows, name, major):
    total = sum(r[4] for r in rows)
    out = [f"/// The CUDA {major} install: the plugin wheel and the NVIDIA runtime wheels",
           f"/// of jax-cuda{major}-plugin's `with-cuda` extra ({total / 1e9:.2f} GB of wheels).",
           f"pub(crate) const {name}: &[Wheel] = &["]
    for n, v, f, h, s in rows:
        out.append(f'    Wheel {{ package: "{n}", version: "{v}", file: "{f}", '
                   f'sha256: "{h}", size: {s} }},')
    out.append("];")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default="/tmp/meshtrain-cuda-wheels")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "crates",
                                                  "pjrt", "src", "install", "cuda_pins.rs"))
    a = ap.parse_args()
    os.makedirs(a.dest, exist_ok=True)
    parts = [
        "//! Pinned wheels of the CUDA installs. Generated by",
        f"//! `scripts/pin_cuda_wheels.py` on {datetime.date.today()}; do not edit by hand.",
        "",
        "use super::Wheel;",
        "",
        "#[rustfmt::skip]",
        rust(pin(12, a.dest), "CUDA12_WHEELS", 12),
        "",
        "#[rustfmt::skip]",
        rust(pin(13, a.dest), "CUDA13_WHEELS", 13),
        "",
    ]
    with open(a.out + ".tmp", "w") as f:
        f.write("\n".join(parts))
    os.replace(a.out + ".tmp", a.out)
    print(f"wrote {os.path.normpath(a.out)}")


if __name__ == "__main__":
    main()

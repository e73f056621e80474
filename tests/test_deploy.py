"""deploy/: the KubeRay RayJob and the Dockerfile, checked by parsing (no cluster or Docker here): the fields KubeRay
requires, an entrypoint kdsweep accepts, and install lines that are the README's."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import tomllib
import yaml

from kdsweep.cli import main
from kdsweep.runtimes import ORT_GPU_FIX

ROOT = Path(__file__).resolve().parents[1]
RAYJOB = ROOT / "deploy" / "kuberay" / "rayjob.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def _containers(group: dict) -> list[dict]:
    containers = group["template"]["spec"]["containers"]
    assert containers and all(c.get("name") and c.get("image") for c in containers)
    return containers


def test_rayjob_has_what_kuberay_requires_and_an_entrypoint_kdsweep_accepts(capsys):
    job = yaml.safe_load(RAYJOB.read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert re.fullmatch(r"2\.\d+\.\d+", cluster["rayVersion"]) and int(cluster["rayVersion"].split(".")[1]) >= 52
    assert cluster["authOptions"]["mode"] == "token"  # token auth needs Ray >= 2.52 (above)
    head = cluster["headGroupSpec"]
    groups = cluster["workerGroupSpecs"]
    assert groups and all(g["groupName"] for g in groups)
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    for group in [head, *groups]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # KubeRay wants strings
    containers = [c for g in [head, *groups] for c in _containers(g)]
    assert len({c["image"] for c in containers}) == 1  # one image: deploy/Dockerfile's
    assert {e["secretRef"]["name"] for c in containers for e in c["envFrom"]} == {"kdsweep-s3"}  # S3 on every node
    assert all(int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1 for g in groups for c in _containers(g))
    # the entrypoint is a kdsweep run of a config in this repository (copied into the image), on S3 storage
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["kdsweep", "run"] and (ROOT / argv[2]).is_file()
    assert argv[argv.index("--storage") + 1].startswith("s3://")
    assert main(["plan", str(ROOT / argv[2])]) == 0 and "38 variants" in capsys.readouterr().out


def test_dockerfile_installs_what_the_readme_says():
    docker = DOCKERFILE.read_text()
    readme = (ROOT / "README.md").read_text()
    runs = [ln.removeprefix("RUN ").strip() for ln in docker.splitlines() if ln.startswith("RUN ")]
    # the CUDA build of PyTorch first: the README's example command, verbatim
    torch_line = re.search(r"`(pip install torch torchvision --index-url [^`]+)`", readme).group(1)
    assert runs[0] == torch_line
    # then kdsweep: the same line docs/scale-out.md's Kubernetes section gives, with extras pyproject defines, and
    # ONNX Runtime's GPU build in place of the CPU one exactly as the README, docs/compression.md and the run say
    assert runs[1] in (ROOT / "docs" / "scale-out.md").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = re.search(r"pip install -e '\.\[([a-z,]+)\]'", runs[1]).group(1).split(",")
    assert set(wanted) <= set(extras) and {"cluster", "gpu"} <= set(wanted)
    assert all(ORT_GPU_FIX in text for text in (runs[1], readme, (ROOT / "docs" / "compression.md").read_text()))
    for src in re.findall(r"^COPY (.+?) \S+$", docker, flags=re.M):
        assert all((ROOT / part).exists() for part in src.split()), src

"""The versions pyproject.toml allows are the ones the generated stubs need, and `make proto` reproduces
protos/gen with the pinned generator (a user with the lowest allowed grpcio/protobuf can import them)."""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from tests.helpers import ROOT

GEN = ROOT / "protos" / "gen"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement(name: str, extra: str | None = None) -> Requirement:
    texts = PROJECT["optional-dependencies"][extra] if extra else PROJECT["dependencies"]
    return next(r for r in map(Requirement, texts) if r.name == name)


def floor(req: Requirement) -> Version:
    return min(Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~="))


def stub_needs() -> tuple[Version, Version]:
    """(grpcio, protobuf) the stubs check for at import."""
    grpc_versions = {Version(m) for f in GEN.rglob("*_pb2_grpc.py")
                     for m in re.findall(r"GRPC_GENERATED_VERSION = '([\d.]+)'", f.read_text())}  # fmt: skip
    proto_versions = {Version(".".join(m)) for f in GEN.rglob("*_pb2.py") for m in re.findall(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),",
        f.read_text())}  # fmt: skip
    assert len(grpc_versions) == 1 and len(proto_versions) == 1, (grpc_versions, proto_versions)
    return grpc_versions.pop(), proto_versions.pop()


def test_runtime_floors_are_what_the_stubs_need() -> None:
    grpc_needed, protobuf_needed = stub_needs()
    for name in ("grpcio", "grpcio-health-checking", "grpcio-reflection"):
        assert floor(requirement(name)) == grpc_needed, name
    assert floor(requirement("protobuf")) == protobuf_needed


def test_generator_pinned_exactly_to_the_stubs_version() -> None:
    tools = requirement("grpcio-tools", "dev")
    assert [s.operator for s in tools.specifier] == ["=="]
    assert Version(next(iter(tools.specifier)).version) == stub_needs()[0]
    assert Version(metadata.version("grpcio-tools")) == stub_needs()[0]  # what `make setup` installed


def test_make_proto_reproduces_protos_gen(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    res = subprocess.run(["bash", str(ROOT / "protos" / "generate.sh")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHON": sys.executable, "PROTO_OUT": str(out)})  # fmt: skip
    assert res.returncode == 0, res.stderr

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}

    assert files(out) == files(GEN)
    differ = [name for name in files(GEN) if not filecmp.cmp(out / name, GEN / name, shallow=False)]
    assert not differ, f"protos/gen differs from a fresh `make proto` in {differ}"

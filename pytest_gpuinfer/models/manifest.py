"""sha256 manifests of model directories: catch a corrupted or swapped checkpoint between runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST_FORMAT = 1


def file_digests(model_dir: Path, *, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 per relative path of every file below ``model_dir`` (streamed; dot-files skipped)."""
    digests: dict[str, str] = {}
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if not path.is_file() or relative.as_posix() in exclude:
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digests[relative.as_posix()] = digest.hexdigest()
    return digests


def compare_digests(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """One line per file that is missing, unexpected, or has a different sha256."""
    problems = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            problems.append(f"{name}: in the manifest but missing from the model")
        elif name not in expected:
            problems.append(f"{name}: present but not in the manifest")
        elif expected[name] != actual[name]:
            problems.append(f"{name}: sha256 {actual[name][:16]} != manifest {expected[name][:16]}")
    return problems


def write_manifest(path: Path, model_dir: Path, digests: dict[str, str]) -> None:
    """Write a manifest file for ``model_dir`` (sorted keys, so it diffs well in git)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": MANIFEST_FORMAT, "model": str(model_dir), "files": digests}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_manifest(path: Path) -> dict[str, str]:
    """The file digests a manifest records; ValueError when it is not a manifest."""
    try:
        files = json.loads(path.read_text())["files"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a model manifest: {exc!r}") from None
    if not isinstance(files, dict):
        raise ValueError(f"{path} is not a model manifest: 'files' is not an object")
    return {str(name): str(digest) for name, digest in files.items()}

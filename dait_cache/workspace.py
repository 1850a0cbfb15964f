"""The workspace on disk: ``<workdir>/<dataset>/{cache,teacher,students}``."""

from __future__ import annotations

from pathlib import Path

from .config import dataset_slug
from .errors import DaitError


def workspace_datasets(workdir: Path) -> list[str]:
    """Dataset folders of the workspace that hold a cache manifest."""
    if not Path(workdir).is_dir():
        return []
    return sorted(p.name for p in Path(workdir).iterdir() if (p / "cache" / "manifest.json").is_file())


def resolve_dataset(workdir: Path, dataset: str | None) -> str:
    """The workspace folder of ``dataset``, or of the only dataset there when none is named."""
    found = workspace_datasets(workdir)
    if dataset:
        slug = dataset_slug(dataset)
        if slug not in found:
            have = ", ".join(found) or "none"
            raise DaitError(
                f"no cache for dataset {dataset!r} in {workdir} (have: {have}); "
                f"run `dait-cache encode --dataset {dataset}` first"
            )
        return slug
    if not found:
        raise DaitError(f"no cache in workspace {workdir}; run `dait-cache encode --dataset NAME` first")
    if len(found) > 1:
        raise DaitError(f"workspace {workdir} holds several datasets ({', '.join(found)}); choose one with --dataset")
    return found[0]


def workspace_of(config_json: Path) -> Path | None:
    """The workspace holding a cache's or a run's ``config.json``
    (``<workdir>/<dataset>/cache/config.json``, ``<workdir>/<dataset>/<teacher|students>/<run>/config.json``);
    None for a file kept anywhere else."""
    path = Path(config_json)
    if path.name != "config.json":
        return None
    folder = path.resolve().parent
    if folder.name == "cache":
        return folder.parents[1]
    return folder.parents[2] if folder.parent.name in ("teacher", "students") else None

"""What every command shares: its click context settings, ``--workdir`` (before or after the
command name), ``--config FILE`` (a command's options from a YAML or JSON file; flags on the
command line win), ``--device``, ``--compile`` and torchrun's process group."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import click

from dait_cache.config import EncodeConfig, TrainConfig

# -h as well as --help, and every option's default in its help
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


WORKDIR_HELP = "Workspace holding caches and runs (env DAIT_WORKDIR)."


def workdir_option(group: bool):
    """``--workdir``: on the group it sets the workspace (default ./dait-work, env DAIT_WORKDIR);
    after a command name (what users type first: ``dait-cache demo --workdir X``) it wins."""
    if group:
        return click.option(
            "--workdir",
            type=click.Path(file_okay=False, path_type=Path),
            default="./dait-work",
            envvar="DAIT_WORKDIR",
            callback=lambda ctx, param, value: _not_under_a_file(value),
            help=WORKDIR_HELP,
        )
    return click.option(
        "--workdir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        is_eager=True,
        expose_value=False,
        callback=_set_workdir,
        help=WORKDIR_HELP + " Same as before the command name; this one wins.",
    )


def _not_under_a_file(value: Path | None) -> Path | None:
    """click checks that the workspace is no file; a file above it failed in mkdir, with a traceback."""
    from dait_cache.io import file_in_the_way

    # the workspace itself is no file here (click's check ran first): what is in the way is above it
    if value is not None and (blocker := file_in_the_way(value)) is not None:
        raise click.BadParameter(f"{value} lies under {blocker}, which is a file, not a folder")
    return value


def _set_workdir(ctx: click.Context, param: click.Parameter, value: Path | None):
    if _not_under_a_file(value) is not None:  # the group's callback already ran and filled ctx.obj
        ctx.ensure_object(dict)["workdir"] = value
    return value


def _read(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise click.BadParameter(
            f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML or JSON"
        ) from None
    except OSError as exc:
        raise click.BadParameter(f"{path} cannot be read ({exc.strerror or exc})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise click.BadParameter("YAML needs PyYAML (pip install pyyaml), or write the file as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise click.BadParameter(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping of option names to values")
    return data


# What a config.json this tool wrote records beyond the command's options: read, never set.
RECORD_ONLY = (
    "provenance",
    "dataset_dir",
    "cache_fingerprint",
    "cache_fingerprint_fields",
    "lambda_rate_resolved",
    "teacher_run",
    "teacher_fingerprint",
    "signal",
    "resumed_provenance",
    "resume",  # how the run was last started, not one of its settings ...
    "overwrite",  # ... nor how its cache was: replayed, it would delete the cache it names
)
ROLE_OF = {"train-teacher": "teacher", "train-student": "student"}  # a cache's config.json has no role


def _from_record(ctx: click.Context, path: Path, data: dict) -> dict:
    """The options of a ``config.json`` this tool wrote (a run's or a cache's: it records
    ``provenance``, or lies where a workspace keeps one), to run it again or ``--resume`` it with
    its own settings: without what it only records, in the workspace that holds it; the command
    must be the one that wrote it."""
    from dait_cache.workspace import workspace_of

    workspace = workspace_of(path)
    if not isinstance(data.get("provenance"), dict) and workspace is None:
        return data  # a file the user wrote
    role, run_role = data.pop("role", None), ROLE_OF.get(ctx.info_name)
    if role != run_role:
        run = role in ("teacher", "student")
        raise click.BadParameter(
            f"{path} is {f'a {role} run' if run else 'a cache'}'s config.json; pass it to "
            f"`dait-cache {f'train-{role}' if run else 'encode'}`"
        )
    # fields of the config dataclass that this command has no option for, at their defaults
    # (a teacher records kd_alpha; the Python API's max_batches): nothing to set
    defaults = {f.name: f.default for f in fields(TrainConfig if run_role else EncodeConfig)}
    takes = {p.name for p in ctx.command.params}
    data = {k: v for k, v in data.items() if k in takes or k not in defaults or v != defaults[k]}
    if workspace is not None:
        data["workdir"] = str(workspace)
    return {k: v for k, v in data.items() if k not in RECORD_ONLY}


def _load(ctx: click.Context, param: click.Parameter, value):
    if value is None:
        return None
    data = {str(k).lstrip("-").replace("-", "_"): v for k, v in _read(Path(value)).items()}
    data = _from_record(ctx, Path(value), data)
    if ctx.parent is not None and ctx.parent.get_parameter_source("workdir") == click.core.ParameterSource.COMMANDLINE:
        data.pop("workdir", None)  # --workdir before the command name is a flag too: it wins (DAIT_WORKDIR does not)
    names = {p.name for p in ctx.command.params if p.name != "config"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise click.BadParameter(
            f"{value} sets {', '.join(unknown)}, which {ctx.info_name} does not take; valid: {', '.join(sorted(names))}"
        )
    # defaults, not values: an option given on the command line still wins
    ctx.default_map = {**(ctx.default_map or {}), **data}
    return value


config_option = click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=_load,
    help="YAML or JSON file of this command's options (names as the flags, e.g. batch-size: 64), or "
    "a run's or cache's own config.json (its settings, its workspace); flags on the command line win; "
    "config.json records the result.",
)


device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    help="Where models run; auto = cuda when available.",
)


def process_group(device: str):
    """The CLI owns torchrun's process group (NCCL on GPUs, gloo on CPUs); a no-op otherwise."""
    import torch

    from dait_cache import dist

    use_cuda = device != "cpu" and torch.cuda.is_available()
    return dist.process_group("cuda" if use_cuda else "cpu")


compile_option = click.option(
    "--compile",
    is_flag=True,
    help="torch.compile the network (GPU; off by default: see the README's measured speed before turning it on).",
)

"""The `attnsets` command line."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from attnsets.errors import DataFormatError, SpecError, SpecErrors

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Can the attention weights of a set model be trusted as an explanation?")
console = Console()
err_console = Console(stderr=True)


def _fail(err: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code=2)


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


@app.command()
def datasets() -> None:
    """List modalities (instance pools) and labelling rules with their parameters."""
    from attnsets.data import POOLS, RULES
    from attnsets.registry import describe_parameters

    for title, registry in (("Modalities (pool.name)", POOLS), ("Rules (rule.name)", RULES)):
        table = Table(title=title, show_lines=True)
        table.add_column("name", style="bold")
        table.add_column("description")
        table.add_column("parameters (default)")
        for name, factory in registry.items():
            params = "\n".join(f"{p} = {d}" for p, _, d in describe_parameters(factory))
            table.add_row(name, _first_line(factory), params)
        console.print(table)


def _dataset_section(config: dict[str, Any]) -> dict[str, Any]:
    """A dataset config is either the whole file or its [dataset] table."""
    return config["dataset"] if isinstance(config.get("dataset"), dict) else config


@app.command("make-dataset")
def make_dataset_cmd(
    config: Path = typer.Argument(..., help="TOML or YAML file with a [dataset] table"),
    out: Path = typer.Option(..., "--out", "-o", help="output .npz file"),
    seed: int | None = typer.Option(None, help="override dataset.seed"),
) -> None:
    """Generate a dataset from a config file and write it to disk."""
    from attnsets.data import DatasetSpec, make_dataset, save_dataset
    from attnsets.data.spec import load_config

    try:
        raw = dict(_dataset_section(load_config(config)))
        if seed is not None:
            raw["seed"] = seed
        spec = DatasetSpec.from_dict(raw)
        with console.status("generating") as status:
            dataset = make_dataset(spec, progress=lambda s: status.update(f"generating {s} split"))
        path = save_dataset(dataset, out)
    except (SpecError, SpecErrors) as err:
        _fail(err)
        return
    console.print(f"wrote {path}")
    _print_summary(dataset)


@app.command()
def summary(
    path: Path = typer.Argument(..., help="a dataset .npz written by make-dataset"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Print a summary of a saved dataset: bags, label balance, sizes and witnesses."""
    from attnsets.data import load_dataset

    try:
        dataset = load_dataset(path)
    except DataFormatError as err:
        _fail(err)
        return
    if as_json:
        from attnsets.data.summary import summarize

        sys.stdout.write(json.dumps(summarize(dataset), indent=2) + "\n")
    else:
        _print_summary(dataset)


def _print_summary(dataset: Any) -> None:
    from attnsets.data.summary import summarize

    info = summarize(dataset)
    spec = info["spec"]
    console.print(f"[bold]{spec['pool']['name']}[/] x [bold]{spec['rule']['name']}[/]: "
                  f"{info['kind']} instances of shape {tuple(info['instance_shape'])}, "
                  f"{info['n_classes']} classes, seed {spec['seed']}")
    table = Table()
    for col in ("split", "bags", "instances", "labels", "size min/mean/max",
                "bags w/ witnesses", "witnesses/bag mean (min-max)", "witness rate"):
        table.add_column(col, justify="right")
    for name, s in info["splits"].items():
        table.add_row(name, str(s["bags"]), str(s["instances"]),
                      "/".join(map(str, s["label_counts"])),
                      f"{s['size_min']}/{s['size_mean']:.1f}/{s['size_max']}",
                      str(s["bags_with_witnesses"]),
                      f"{s['witnesses_mean']:.2f} ({s['witnesses_min']}-{s['witnesses_max']})",
                      f"{s['witness_rate']:.3f}")
    console.print(table)


@app.command()
def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="output directory"),
) -> None:
    """The main job on embedded data: build digits-presence bags, save them and summarise."""
    from attnsets.data import DatasetSpec, make_dataset, save_dataset

    spec = DatasetSpec.from_dict({
        "pool": {"name": "digits"},
        "rule": {"name": "presence", "key": 9},
        "bags": {"train": 1000, "val": 200, "test": 200},
        "bag_size": {"kind": "normal", "mean": 10, "sd": 2, "min": 2},
        "seed": 0,
    })
    dataset = make_dataset(spec)
    path = save_dataset(dataset, out / "digits_presence.npz")
    console.print(f"wrote {path}")
    _print_summary(dataset)


def main() -> None:  # pragma: no cover - console entry
    app()

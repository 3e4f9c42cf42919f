"""The `attnsets` command line."""

from __future__ import annotations

import inspect
import json
import math
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from attnsets.data.spec import load_config
from attnsets.errors import DataFormatError, SpecError, SpecErrors, TrainingDivergedError

if TYPE_CHECKING:
    from attnsets.assessment import Assessment

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Can the attention weights of a set model be trusted as an explanation?")
# Off a terminal (pipes, CI logs) rich would wrap tables at 80 columns; give them room instead.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


@app.callback()
def _load_plugins(
    plugin: list[str] = typer.Option(
        [], "--plugin", "-p",
        help="module (dotted name or .py file) that registers your pools, rules, encoders, "
             "poolings or explainers; repeatable; also read from $ATTNSETS_PLUGINS"),
) -> None:
    """Can the attention weights of a set model be trusted as an explanation?"""
    from attnsets.registry import load_plugins

    warnings.showwarning = _show_plugin_warning
    try:
        load_plugins(plugin)
    except SpecError as err:
        _fail(err)


_show_warning = warnings.showwarning


def _show_plugin_warning(message: Warning | str, category: type[Warning], *args: Any,
                         **kwargs: Any) -> None:
    """A plugin that failed to load is one line on stderr (no source line, no traceback)."""
    from attnsets.registry import PluginWarning

    if issubclass(category, PluginWarning):
        err_console.print(f"[bold yellow]warning:[/] {message}", highlight=False)
    else:
        _show_warning(message, category, *args, **kwargs)


def _fail(err: Exception) -> None:
    from rich.markup import escape

    # User strings (file names, column names, bag ids) may hold "[...]": not rich markup.
    err_console.print(f"[bold red]error:[/] {escape(str(err))}")
    raise typer.Exit(code=2)


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


@app.command()
def datasets() -> None:
    """List modalities (instance pools) and labelling rules with their parameters."""
    from rich.markup import escape

    from attnsets.data import POOLS, RULES
    from attnsets.registry import describe_parameters

    for title, registry in (("Modalities (pool.name)", POOLS), ("Rules (rule.name)", RULES)):
        table = Table(title=title, show_lines=True)
        table.add_column("name", style="bold")
        table.add_column("description")
        table.add_column("parameters (default)")
        for name, factory in registry.items():
            # Docstrings and defaults are plain text: rich would read "[min_length, max_length]"
            # or a default such as "[8, 9]" as markup tags and drop them.
            params = "\n".join(escape(f"{p} = {d}") for p, _, d in describe_parameters(factory))
            table.add_row(escape(name), escape(_first_line(factory)), params)
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
    from attnsets.files import check_output_directory
    from attnsets.memory import check_generation_fits

    try:
        raw = dict(_dataset_section(load_config(config)))
        if seed is not None:
            raw["seed"] = seed
        spec = DatasetSpec.from_dict(raw)
        if out.is_dir():
            raise SpecError("out", str(out), "a .npz file path (this is a directory)")
        check_output_directory(out.parent, "out")
        check_generation_fits(spec)
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


def _fmt(value: Any, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "—" if value != value else f"{value:.{digits}f}"


def print_assessment(assessment: Assessment, title: str = "") -> None:
    """Bag metrics, each explainer's importance metrics and the silent-failure flags as tables."""
    k = assessment.n_members
    bag = Table(title=f"{title}bag metrics on the test split ({k} member{'s' * (k > 1)})")
    for col in ("", "accuracy", "balanced acc.", "AUROC", "log loss"):
        bag.add_column(col, justify="right")
    for name, row in (("member mean", assessment.member_mean_bag),
                      ("ensemble", assessment.ensemble_bag)):
        bag.add_row(name, *(_fmt(v) for v in (row.accuracy, row.balanced_accuracy, row.auroc,
                                               row.log_loss)))
    console.print(bag)
    crit = assessment.criteria
    imp = Table(title="instance importance vs. ground-truth witnesses (mean over members)",
                caption=f"silent failure = {crit.bag_metric} >= {crit.min_bag_score} and "
                        f"{crit.importance_metric} <= {crit.max_importance}")
    for col in ("explainer", "AUROC [95% CI]", "AUPRC (chance)", "NDCG@k", "P@k", "AUROC-2",
                "mass on witn.", "AOPC-R", "misleading", "silent", "ens. AUROC", "ens. silent"):
        imp.add_column(col, justify="right", no_wrap=True)
    for method, result in assessment.explainers.items():
        silent = sum(result.silent)
        mean = result.mean
        imp.add_row(
            method, f"{_fmt(mean('auroc'))} [{_fmt(mean('auroc_ci_low'))}, "
                    f"{_fmt(mean('auroc_ci_high'))}]",
            f"{_fmt(mean('auprc'))} ({_fmt(mean('auprc_chance'))})", _fmt(mean("ndcg_at_k")),
            _fmt(mean("precision_at_k")), _fmt(mean("auroc2")), _fmt(mean("concentration")),
            _fmt(mean("aopc_relative")), _fmt(mean("misleading_rate")),
            f"[{'red' if silent else 'green'}]{silent}/{k}[/]",
            _fmt(result.ensemble_value("auroc")),
            "[red]yes[/]" if result.ensemble_silent else "[green]no[/]")
    console.print(imp)
    for method, reason in assessment.not_applicable.items():
        console.print(f"[dim]{method}: skipped, {reason}[/]")
    unit = assessment.unit_test
    if unit is not None:
        flagged = sum(f.flagged for f in unit.members)
        console.print(f"algorithmic unit test ({unit.metric} on the train distribution vs. the "
                      f"shifted test split): {flagged}/{k} members flagged; ensemble "
                      f"{'[red]flagged[/]' if unit.ensemble.flagged else '[green]passes[/]'}"
                      f" ({unit.ensemble.reason})")


@app.command()
def evaluate(
    config: Path = typer.Argument(..., help="dataset config (TOML/YAML); optional [model], "
                                            "[training] and [assess] tables"),
    pooling: str | None = typer.Option(None, help="override model.pooling"),
    members: int = typer.Option(5, min=1, help="ensemble members (trained in one vectorised pass)"),
    explainers: str | None = typer.Option(None, help="comma-separated methods (default: all that apply)"),
    epochs: int | None = typer.Option(None, help="override training.epochs"),
    seed: int = typer.Option(0, help="first member seed; members use seed, seed+1, ..."),
    as_json: Path | None = typer.Option(None, "--json", help="also write all metrics as JSON here"),
    device: str | None = typer.Option(None, help='where to train and explain: "auto" (CUDA when '
                                                 'available, else CPU), "cpu", "cuda", "cuda:N"'),
) -> None:
    """Train a model (or ensemble) on a dataset config; print bag metrics, each explainer's
    importance metrics and silent-failure flags."""
    from attnsets.config.single import run_spec_from_config
    from attnsets.explain import EXPLAINERS
    from attnsets.run import execute

    try:
        spec = run_spec_from_config(
            load_config(config), members=members, seed=seed, pooling=pooling, epochs=epochs,
            device=device,
            explainers=explainers.split(",") if explainers else None,
            default_explainers=[m for m in EXPLAINERS.names() if m != "shapley"])
        with console.status(f"training {members} member(s) and explaining") as status:
            result = execute(spec, progress=lambda s: status.update(s))
    except (SpecError, SpecErrors) as err:
        _fail(err)
        return
    assert result.assessment is not None
    console.print(f"trained in {result.training.seconds:.1f}s "
                  f"(epochs run per member: {result.training.epochs_run})")
    print_assessment(result.assessment)
    if as_json:
        from attnsets.study.store import dumps

        as_json.write_text(dumps({**result.assessment.to_dict(),
                                  "training": result.training.to_dict()}))
        console.print(f"wrote {as_json}")


@app.command()
def run(
    config: Path = typer.Argument(..., help="study config (TOML/YAML)"),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="results directory"),
    workers: int = typer.Option(1, min=1, help="parallel worker processes"),
    resume: bool = typer.Option(False, help="finish only the cells missing from --out"),
    executor: str = typer.Option("local", help="local | ray"),
    address: str | None = typer.Option(None, help="Ray cluster address (default: a local instance)"),
    device: str | None = typer.Option(None, help='override [study] device: "auto" (CUDA when '
                                                 'available, else CPU), "cpu", "cuda", "cuda:N"'),
    # Two options rather than an optional value (`--mlflow [URI]`): typer has deprecated
    # click's flag_value, and an optional value would swallow a following CONFIG argument.
    mlflow: bool = typer.Option(False, "--mlflow", help="log each cell as an MLflow run "
                                "(attnsets[mlflow]), by default to a file store in OUT/mlruns"),
    mlflow_uri: str | None = typer.Option(None, "--mlflow-uri", metavar="URI",
                                          help="MLflow tracking URI (implies --mlflow)"),
) -> None:
    """Run a whole study: datasets x models x seeds x grid, stored in OUT/results.sqlite."""
    from attnsets.memory import check_study_fits
    from attnsets.study.config import load_study
    from attnsets.study.runner import StudyExistsError, run_study
    from attnsets.study.store import StoreLockedError

    tracker = None
    try:
        study = load_study(config, device)
        check_study_fits(study.cells, workers)
        if mlflow or mlflow_uri:
            try:
                from attnsets.integrations.mlflow import MlflowTracker, default_uri
            except ImportError as err:
                raise SpecError("mlflow", mlflow_uri, f"an installed MLflow ({err})") from None
            tracker = MlflowTracker(mlflow_uri or default_uri(out), study.name)
        summary = run_study(study, out, workers=workers, executor=executor, address=address,
                            resume=resume, on_record=tracker)
    except (SpecError, SpecErrors, StudyExistsError, StoreLockedError) as err:
        if tracker is not None:
            tracker.finish(failed=True)
        _fail(err)
        return
    if tracker is not None:
        tracker.finish(out, failed=not summary.ok)
        console.print(f"MLflow: {len(tracker.cell_runs)} cell run(s) logged to {tracker.uri}")
        if tracker.stopped is not None:
            err_console.print(f"[bold yellow]warning:[/] MLflow logging stopped {tracker.stopped}"
                              f"; every cell is in {out}/results.sqlite", highlight=False)
    _print_run_summary(summary, out)
    _print_headline(out)
    if not summary.ok:
        raise typer.Exit(code=1)


def _print_run_summary(summary: Any, out: Path) -> None:
    from rich.markup import escape

    console.print(f"[bold]{summary.done} done, {summary.failed} failed, {summary.skipped} already "
                  f"done[/] of {summary.total} cells in {summary.seconds:.0f}s; results in "
                  f"{escape(str(out))}")
    for label, error in summary.failures:
        console.print(f"[red]failed[/] {escape(str(label))}: {escape(str(error))}")


def _print_headline(out: Path) -> None:
    """The headline table of the study in `out` (attnsets.headline per dataset x model) for
    the study's importance metric and headline explainer."""
    from rich.markup import escape

    from attnsets.report.collect import open_results as load_results
    from attnsets.report.tables import headline_rows, study_metric

    study = load_results(out)
    metric, method = study_metric(study).upper(), study.method or "attention"
    view = Table(title=f"headline: can the {method} be trusted?",
                 caption=f"means over replicate seeds; silent rate = share of members with high "
                         f"bag accuracy but low {method} {metric}")
    for col in ("dataset", "rule", "model", "cells", "bag accuracy", f"{method} {metric}",
                "silent rate", f"ensemble {metric}", "ensemble gain"):
        view.add_column(col, justify="left" if col in ("dataset", "rule", "model") else "right")
    for row in headline_rows(study):
        found, bags = row.headline.explainer, row.headline.bags
        gain = found.ensemble_gain if found else math.nan
        view.add_row(escape(str(row.dataset)), escape(str(row.rule)), escape(str(row.model)),
                     str(bags.cells), _fmt(bags.accuracy),
                     _fmt(found.importance.value if found else math.nan),
                     _fmt(found.silent_rate if found else math.nan),
                     _fmt(found.ensemble if found else math.nan),
                     "—" if math.isnan(gain) else f"{gain:+.3f}")
    console.print(view)


@app.command()
def results(
    directory: Path = typer.Argument(..., help="a study's results directory"),
    export: Path | None = typer.Option(None, help="write the table to .csv or .parquet"),
    headline: bool = typer.Option(True, help="print the headline table"),
    times: bool = typer.Option(False, "--times", help="print the worker time by stage"),
) -> None:
    """Print (or export) the results table of a study."""
    from attnsets.study.results import export_results, results_frame

    try:
        frame = results_frame(directory)
        if export:
            path = export_results(directory, export)
            console.print(f"wrote {len(frame)} rows x {len(frame.columns)} columns to {path}")
    except (FileNotFoundError, SpecError) as err:
        _fail(err)
        return
    counts = frame["status"].value_counts().to_dict() if len(frame) else {}
    console.print(f"{len(frame)} cells: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if headline and len(frame):
        _print_headline(directory)
    if times and len(frame):
        _print_times(directory)


def _print_times(out: Path) -> None:
    from attnsets.study.results import cost_summary, stage_table, time_by_stage

    stages, totals = time_by_stage(out)
    rows = stage_table(stages)
    view = Table(title="where the time went", caption=cost_summary(totals))
    for col in rows.columns:
        view.add_column(col, justify="left" if col == "stage" else "right")
    for row in rows.itertuples(index=False):
        view.add_row(*row)
    console.print(view)


@app.command()
def report(
    directory: Path = typer.Argument(..., help="a study's results directory"),
    out: Path | None = typer.Option(None, "--out", "-o", help="report directory (default DIR/report)"),
) -> None:
    """Write a self-contained report.html with every figure (PNG, SVG) and table (CSV, Markdown)."""
    from attnsets.report import write_report

    try:
        with console.status("writing the report") as status:
            path = write_report(directory, out, progress=lambda s: status.update(f"report: {s}"))
    except SpecError as err:
        _fail(err)
        return
    console.print(f"report: {path}")
    _attach_report_to_mlflow(directory, path.parent)


def _attach_report_to_mlflow(directory: Path, report_dir: Path) -> None:
    """A study run with --mlflow named its MLflow run in DIR/mlflow.json: the report joins it."""
    if not (directory / "mlflow.json").is_file():
        return
    try:
        from attnsets.integrations.mlflow import attach_report

        parent = attach_report(directory, report_dir)
    except (ImportError, SpecError) as err:
        err_console.print(f"[bold yellow]warning:[/] the report was not attached to the MLflow "
                          f"run: {err}", highlight=False)
        return
    if parent is not None:
        console.print(f"MLflow: report attached to run {parent.run_id} at {parent.uri}")


@app.command("results-page")
def results_page(
    directory: Path = typer.Argument(..., help="a study's results directory"),
    out: Path = typer.Option(Path("docs/results.md"), "--out", "-o",
                             help="Markdown page; figures and tables go to the same path without .md"),
    command: str = typer.Option("make results", help="the command quoted on the page as its source"),
) -> None:
    """Write the findings page (docs/results.md): report figures, findings with 95% CIs, and the
    comparison with the published claims, all computed from the store."""
    from attnsets.report.results_page import write_results_page

    try:
        with console.status("writing the results page") as status:
            path = write_results_page(directory, out, command=command,
                                      progress=lambda s: status.update(f"results page: {s}"))
    except SpecError as err:
        _fail(err)
        return
    console.print(f"results page: {path}")


@app.command()
def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="output directory"),
    workers: int = typer.Option(2, min=1, help="parallel worker processes"),
    device: str | None = typer.Option(None, help='where to train and explain: "auto" (CUDA when '
                                                 'available, else CPU), "cpu", "cuda", "cuda:N"'),
) -> None:
    """The main job on embedded data: run configs/demo.toml (resuming if interrupted), print the
    headline table and write the HTML report."""
    from attnsets.report import write_report
    from attnsets.study.config import load_study
    from attnsets.study.runner import run_study

    try:
        study = load_study(Path(__file__).resolve().parent / "configs" / "demo.toml", device)
    except (SpecError, SpecErrors) as err:
        _fail(err)
        return
    summary = run_study(study, out, workers=workers, resume=True)
    _print_run_summary(summary, out)
    _print_headline(out)
    with console.status("writing the report"):
        path = write_report(out)
    console.print(f"[bold]report:[/] {path}")
    if not summary.ok:
        raise typer.Exit(code=1)


@app.command("audit")
def audit_cmd(
    model: str = typer.Argument(..., help="your model: module:object or path/to/file.py:object "
                                          "(a builder (info, seed) -> nn.Module), or a "
                                          "registered pooling name"),
    battery: Path | None = typer.Option(None, help="TOML/YAML with [[datasets]] tables "
                                                   "(default: the built-in battery)"),
    seeds: str = typer.Option("0,1", help="comma-separated replicate seeds"),
    members: int = typer.Option(3, min=1, help="models trained per replicate seed"),
    epochs: int | None = typer.Option(None, help="override the audit's training epochs"),
    out: Path | None = typer.Option(None, "--out", "-o", help="also write the table here "
                                                               "(.csv or .parquet)"),
    device: str | None = typer.Option(None, help='where to train and explain: "auto" (CUDA when '
                                                 'available, else CPU), "cpu", "cuda", "cuda:N"'),
) -> None:
    """Audit your own model on a battery of datasets with known witnesses: does it learn, does
    its attention find the witnesses, does it fail silently, does it pass the unit tests, does
    it respect padding? Exit code 1 when an entry fails."""
    from attnsets.audit import audit
    from attnsets.data.battery import load_battery

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        _fail(SpecError("seeds", seeds, "comma-separated integers, e.g. 0,1"))
        return
    try:
        if out is not None:
            from attnsets.files import check_output_directory
            from attnsets.tables import check_table_path

            check_output_directory(check_table_path(out, "out").parent, "out")
        entries = load_battery(battery) if battery else None
        with console.status("auditing") as status:
            result = audit(model, battery=entries, seeds=seed_list, members=members,
                           training=_training_overrides(epochs, device),
                           progress=lambda s: status.update(f"audit: {s}"))
        path = result.write(out) if out else None
    except (SpecError, SpecErrors, DataFormatError) as err:
        _fail(err)
        return
    print_audit(result)
    if path:
        console.print(f"wrote {path}")
    if not result.passed:
        raise typer.Exit(code=1)


def _training_overrides(epochs: int | None, device: str | None) -> dict[str, Any] | None:
    """Training fields set on the command line (None = the command's defaults)."""
    table = {k: v for k, v in (("epochs", epochs), ("device", device)) if v is not None}
    return table or None


def _yes_no(value: Any) -> str:
    """yes / no for a verdict, a dash for one that was not judged (None, NA)."""
    from pandas import isna

    if value is None or isna(value):
        return "[dim]—[/]"
    return "[green]yes[/]" if bool(value) else "[red]no[/]"


def print_audit(result: Any) -> None:
    """The audit table: verdicts with the numbers behind them, then why verdicts failed."""
    from pandas import isna
    from rich.markup import escape

    crit = result.criteria
    table = Table(title=f"audit of {escape(result.model)} ({result.seconds:.0f}s)",
                  caption=f"learns = {crit.bag_metric} >= {crit.min_bag_score} (val split "
                          f"for shifted-test rules); finds witnesses = attention "
                          f"{crit.importance_metric} > {crit.max_importance}; — = not judged")
    key = crit.importance_metric
    for col in ("entry", "learns", "score", "attention finds witnesses", f"attn. {key.upper()}",
                "no silent failure", "silent", "unit test", "padding ok", "passed"):
        table.add_column(col, justify="left" if col == "entry" else "right")
    for row in result.table.to_dict("records"):
        silent = row["silent_members"]
        table.add_row(
            escape(str(row["entry"])), _yes_no(row["learns_task"]), _fmt(row["learn_score"]),
            _yes_no(row["attention_finds_witnesses"]), _fmt(row[f"attention_{key}"]),
            _yes_no(row["no_silent_failures"]),
            "—" if isna(silent) else f"{silent}/{row['members_trained']}",
            _yes_no(row["passes_unit_test"]), _yes_no(row["respects_padding"]),
            _yes_no(row["passed"]))
    console.print(table)
    for row in result.table.to_dict("records"):
        if row["notes"]:
            console.print(f"[bold]{escape(str(row['entry']))}[/]: {escape(str(row['notes']))}")
    colour = "green" if result.passed else "red"
    console.print(f"[bold {colour}]verdict: {escape(result.verdict)}[/]")


@app.command("explain-data")
def explain_data(
    table: Path = typer.Argument(..., help="CSV or Parquet file, one row per instance, or an "
                                           ".h5ad file (AnnData: one cell per instance, bag and "
                                           "label columns in obs)"),
    bag_column: str = typer.Option(..., "--bag-column", help="column holding each row's bag id"),
    label_column: str = typer.Option(..., "--label-column", help="column holding the bag label"),
    features: str | None = typer.Option(None, help="comma-separated feature columns "
                                                   "(default: every other numeric column)"),
    obsm: str | None = typer.Option(None, "--obsm", help=".h5ad only: features from obsm[KEY] "
                                                         "(e.g. X_pca) instead of X"),
    out: Path = typer.Option(Path("explained"), "--out", "-o", help="output directory"),
    fmt: str = typer.Option("csv", "--format", help="csv | parquet"),
    pooling: str = typer.Option("attention", help="registered pooling of the model"),
    members: int = typer.Option(5, min=2, help="ensemble members (agreement needs >= 2)"),
    method: str = typer.Option("attention", help="explainer"),
    epochs: int | None = typer.Option(None, help="override the training epochs"),
    seed: int = typer.Option(0, min=0, help="split seed and first member seed"),
    device: str | None = typer.Option(None, help='where to train and explain: "auto" (CUDA when '
                                                 'available, else CPU), "cpu", "cuda", "cuda:N"'),
) -> None:
    """Explain your own bags (no instance labels needed): train an ensemble on a seeded split,
    score every instance, and rate each bag by how much the members agree (label-free).
    With an .h5ad input the results are also written back as obs columns of a copy,
    OUT/<name>.attnsets.h5ad (attnsets[anndata])."""
    from attnsets.files import check_output_directory
    from attnsets.models import ModelSpec
    from attnsets.own_data import check_format, explain_own_data

    try:
        check_format(fmt)
        check_output_directory(out, "out")
        data, adata = _load_own_input(table, bag_column, label_column, features, obsm)
        with console.status(f"training {members} members on {len(data)} bags and explaining"):
            result = explain_own_data(
                data, model=ModelSpec(pooling=pooling, embed_dim=32), members=members,
                training=_training_overrides(epochs, device), method=method,
                seed=seed)
        paths = _write_own_outputs(result, adata, table, out, fmt)
    except (SpecError, SpecErrors, DataFormatError, TrainingDivergedError) as err:
        _fail(err)
        return
    _print_own_result(data, result, paths)


def _load_own_input(table: Path, bag_column: str, label_column: str, features: str | None,
                    obsm: str | None) -> tuple[Any, Any]:
    """(OwnBags, the AnnData it came from or None) for explain-data's input file."""
    from attnsets.data.own import load_bags
    from attnsets.files import check_input_file

    check_input_file(table, "table", (".csv", ".parquet", ".h5ad"))
    if table.suffix.lower() == ".h5ad":
        try:
            from attnsets.integrations.anndata import load_anndata, read_h5ad
        except ImportError as err:
            raise SpecError("table", str(table), f"a CSV or Parquet file ({err})") from None
        if features:
            raise SpecError("features", features, "no feature columns with an .h5ad input: "
                                                  "features come from X or --obsm KEY")
        adata = read_h5ad(table)
        return load_anndata(adata, bag_column, label_column, obsm), adata
    if obsm is not None:
        raise SpecError("obsm", obsm, "no --obsm with a CSV or Parquet input (it names "
                                      "an AnnData embedding of an .h5ad file)")
    try:
        return load_bags(table, bag_column, label_column,
                         [c.strip() for c in features.split(",")] if features else None), None
    except SpecError as err:  # the reader's "source" is this command's TABLE argument
        raise (SpecError("table", err.value, err.allowed) if err.field == "source" else err
               ) from None


def _write_own_outputs(result: Any, adata: Any, table: Path, out: Path, fmt: str
                       ) -> list[Path]:
    """Every output file staged and moved into OUT together (nothing half-written)."""
    from attnsets.files import staged_output
    from attnsets.tables import write_table

    names = [f"instances.{fmt}", f"bags.{fmt}"]
    if adata is not None:
        names.append(f"{table.stem}.attnsets.h5ad")
    try:
        with staged_output(out, "out") as staging:
            write_table(result.instances, staging / names[0])
            write_table(result.bags, staging / names[1])
            if adata is not None:
                from attnsets.integrations.anndata import write_h5ad

                write_h5ad(adata, result, staging / names[2])
    except OSError as err:
        raise SpecError("out", str(out), f"a directory we can write the results in "
                                         f"({err.strerror or err}: {err.filename or ''})") from None
    return [out / name for name in names]


def _print_own_result(data: Any, result: Any, paths: list[Path]) -> None:
    from rich.markup import escape

    console.print(escape(f"{len(data)} bags, {int(data.sizes.sum())} instances, features "
                         f"{data.feature_names}" + (f" (ignored: {data.ignored_columns})"
                                                    if data.ignored_columns else "")))
    single = int((data.sizes == 1).sum())
    if single:
        console.print(f"[dim]{single} bag(s) hold a single instance: their rank agreement is "
                      "undefined (NaN)[/]")
    view = Table(title="ensemble bag predictions and member agreement per split",
                 caption="rank agreement = mean pairwise Spearman of member scores in a bag; "
                         "top-k overlap = mean pairwise share of shared top-k instances")
    for col in ("split", "bags", "accuracy", "balanced acc.", "rank agreement (median)",
                "top-k overlap (median)"):
        view.add_column(col, justify="right")
    for split, metrics in result.metrics.items():
        part = result.bags[result.bags["split"] == split]
        view.add_row(split, str(len(part)), _fmt(metrics["accuracy"]),
                     _fmt(metrics["balanced_accuracy"]), _fmt(part["rank_agreement"].median()),
                     _fmt(part["top_k_overlap"].median()))
    console.print(view)
    held_out = result.bags[result.bags["split"] != "train"].sort_values("rank_agreement")
    if len(held_out):
        console.print(escape("held-out bags whose members agree least: " + ", ".join(
            f"{b} ({_fmt(a, 2)})" for b, a in zip(held_out["bag_id"].head(5),
                                                  held_out["rank_agreement"].head(5),
                                                  strict=True))))
    console.print(escape("wrote " + ", ".join(map(str, paths[:-1])) + f" and {paths[-1]}"))


def main() -> None:  # pragma: no cover - console entry
    app()
if __name__ == "__main__":  # python -m attnsets.cli
    app()

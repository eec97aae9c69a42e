"""``mcl benchmark``: every continual learner on the same data, seeds and orders; a report folder and an MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.commands.settings import ConfigOption
from flows.console import configure_logging, console


def _ids(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def benchmark(
    order: Annotated[str, typer.Option(help="Marketplace ids in arrival order, comma separated, e.g. en,es,fr (ESCI: locales us,es,jp).")],
    out: Annotated[Path, typer.Option(help="Report folder: results.jsonl (resumable), report.md, PNGs, summary.csv.")],
    data: Annotated[Optional[Path], typer.Option(help="Data root holding one folder per marketplace (<data>/<id>/train.parquet ...), e.g. from `mcl data demo`.")] = None,
    esci_examples: Annotated[Optional[str], typer.Option(help="ESCI examples table (instead of --data); the order names locales.")] = None,
    esci_products: Annotated[Optional[str], typer.Option(help="ESCI products table (omit when the examples carry product columns).")] = None,
    methods: Annotated[Optional[str], typer.Option(help="Methods, comma separated (default: the preset's list; `all` for every one): ad, ad-paper, ad-no-translation, fusion-no-distill, adapter-only, probe, joint-fusion, sm, seq-ft, ewc, lwf, hat, replay.")] = None,
    encoder: Annotated[Optional[str], typer.Option(help="Encoder: hub id, local folder, or the embedded default.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Benchmark preset (tasks/presets/benchmark/): cpu (default) or quick.")] = None,
    quick: Annotated[bool, typer.Option(help="A smoke run: --preset quick (1 seed, 64 pairs, 1 epoch per stage, sweep 0,0.3).")] = False,
    config: ConfigOption = None,
    sets: Annotated[Optional[list[str]], typer.Option("--set", help="Override one setting, e.g. --set seeds=3 --set max_train_pairs=0 --set fractions=[0,0.3] --set fusion.epochs=5 (a learner setting) --set baselines.full.learning_rate=2e-5; repeatable.")] = None,
    mlflow: Annotated[bool, typer.Option(help="Log the report to MLflow (tracking URI from settings).")] = True,
    retraining: Annotated[Optional[str], typer.Option(help="Run the retraining comparison instead (issue 14): fresh training rows per marketplace of --order, comma separated, e.g. 1200,400,200; --methods then names retraining methods (uniform, dwa, gradnorm, async-kd: all by default) and learner.retrain.* sets E, patience and the step budget.")] = None,
    verbose: bool = False,
) -> None:
    """Run the continual-learning benchmark and write a report.

    Runs every method x seed x order on the same capped data (plus the `ad` translation-fraction sweep),
    appending each finished run to OUT/results.jsonl: rerun the same command after an interruption and
    finished runs are skipped. Then prints the paper-shaped table (per-marketplace ROC-AUC after the
    sequence, mean ± std, BWT, forgetting, trainable parameters, training time) and writes OUT/report.md
    with R heatmaps, ROC-AUC curves, the fraction sweep (Figure 4) and a performance section.

    Runs = methods x seeds x orders + (sweep fractions - 1) x sweep seeds. The settings that size it, biggest
    first: --methods, seeds, max_train_pairs, the stages' epochs, max_length, max_eval_pairs (`mcl benchmark
    --help` names them; `--preset quick` is a smoke run). On a GPU, at full scale: --set max_train_pairs=0
    --set max_eval_pairs=0 --set adapter.epochs=5 --set fusion.epochs=5 --set baselines.full.epochs=3
    --set max_length=64 --set adapter.batch_size=32 --set fusion.batch_size=32 --set device=cuda.
    """
    configure_logging(verbose)
    from tasks.benchmark import (
        BenchmarkData,
        benchmark_config,
        log_report_to_mlflow,
        run_benchmark,
        summarise,
        write_report,
    )
    from tasks.config import BENCHMARK_PRESET, ConfigError
    from tasks.data import DataValidationError
    from tasks.learner import resolve_settings_encoder
    from tasks.settings import get_settings

    if (data is None) == (esci_examples is None):
        raise typer.BadParameter("give either --data (a data root) or --esci-examples (the ESCI layout)")
    settings = get_settings()
    if retraining is not None:
        _retraining(order, retraining, methods, data, out, preset, quick, config, sets, encoder, settings, mlflow)
        return
    try:
        cfg = benchmark_config(_ids(order), _ids(methods or ""), preset=preset or ("quick" if quick else BENCHMARK_PRESET),
                               file=config, overrides=sets or (),
                               encoder=encoder or settings.encoder)
    except (ValueError, ConfigError) as err:
        raise typer.BadParameter(str(err), param_hint="--methods/--preset/--config/--set") from None
    try:
        if data is not None:
            bench_data = BenchmarkData.load(data, cfg, s3_endpoint_url=settings.s3_endpoint_url)
        else:
            bench_data = BenchmarkData.from_esci(esci_examples, esci_products, cfg,
                                                 s3_endpoint_url=settings.s3_endpoint_url)
        ref = resolve_settings_encoder(settings, encoder)
    except (DataValidationError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}", soft_wrap=True)
        raise typer.Exit(1) from None
    try:
        run = run_benchmark(cfg, bench_data, out, encoder=ref, translation_cache=settings.cache_dir / "translations")
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/yellow]: finished runs are in {out / 'results.jsonl'}; "
                      "rerun the same command to go on")
        raise typer.Exit(130) from None
    console.print(f"{run.ran} runs now, {run.skipped} from earlier ({out / 'results.jsonl'})")
    summary = summarise(run.records)
    console.print(_summary_table(summary))
    report = write_report(out, run.records, cfg, summary)
    console.print(f"report written to {report}")
    if mlflow:
        run_id = log_report_to_mlflow(out, run.records, cfg, summary, tracking_uri=settings.resolved_tracking_uri,
                                      artifact_location=settings.resolved_artifact_location)
        console.print(f"MLflow run {run_id} at {settings.resolved_tracking_uri}")


def _retraining(order: str, sizes_text: str, methods: str | None, data: Path | None, out: Path, preset: str | None,
                quick: bool, config: Path | None, sets: list[str] | None, encoder: str | None, settings,
                log_to_mlflow: bool) -> None:
    """The retraining comparison: a champion per seed, then every joint method on the same fresh rows."""
    from tasks.benchmark import BenchmarkData, benchmark_config
    from tasks.benchmark.retraining import (
        RETRAIN_METHODS,
        check_retrain_methods,
        log_retraining_to_mlflow,
        retraining_table,
        run_retraining,
        write_retraining_report,
    )
    from tasks.config import BENCHMARK_PRESET, ConfigError
    from tasks.data import DataValidationError
    from tasks.learner import resolve_settings_encoder

    ids, chosen = _ids(order), _ids(methods or "") or list(RETRAIN_METHODS)
    try:
        sizes = dict(zip(ids, (int(n) for n in _ids(sizes_text)), strict=True))
    except ValueError:
        raise typer.BadParameter(f"give one whole number of fresh rows per marketplace of --order {order!r}, got "
                                 f"{sizes_text!r}", param_hint="--retraining") from None
    if data is None:
        raise typer.BadParameter("the retraining comparison reads a data root: give --data", param_hint="--data")
    try:
        check_retrain_methods(chosen)
        cfg = benchmark_config(ids, (), preset=preset or ("quick" if quick else BENCHMARK_PRESET), file=config,
                               overrides=sets or (), encoder=encoder or settings.encoder)
    except (ValueError, ConfigError) as err:
        raise typer.BadParameter(str(err), param_hint="--methods/--set") from None
    try:
        bench_data = BenchmarkData.load(data, cfg.model_copy(update={"max_train_pairs": 0}),
                                        s3_endpoint_url=settings.s3_endpoint_url)
        ref = resolve_settings_encoder(settings, encoder)
    except (DataValidationError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}", soft_wrap=True)
        raise typer.Exit(1) from None
    records = run_retraining(cfg, bench_data, sizes, chosen, out, encoder=ref)
    console.print(retraining_table(records).to_string())
    console.print(f"report written to {write_retraining_report(out, records, cfg, sizes)}")
    if log_to_mlflow:
        run_id = log_retraining_to_mlflow(out, records, cfg, tracking_uri=settings.resolved_tracking_uri,
                                          artifact_location=settings.resolved_artifact_location)
        console.print(f"MLflow run {run_id} at {settings.resolved_tracking_uri}")


def _summary_table(summary):
    from rich.table import Table

    table = Table(title="after the whole sequence: test ROC-AUC, mean ± std over runs")
    table.add_column("method", style="bold")
    for column in summary.table.columns:
        table.add_column(str(column), justify="right")
    for method, row in summary.table.iterrows():
        table.add_row(str(method), *(str(v) for v in row))
    return table

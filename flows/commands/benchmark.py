"""``mcl benchmark``: every continual learner on the same data, seeds and orders; a report folder and an MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.console import configure_logging, console


def _ids(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in _ids(text))
    except ValueError:
        raise typer.BadParameter(f"fractions must be numbers separated by commas, got {text!r}") from None


def benchmark(
    order: Annotated[str, typer.Option(help="Marketplace ids in arrival order, comma separated, e.g. en,es,fr (ESCI: locales us,es,jp).")],
    out: Annotated[Path, typer.Option(help="Report folder: results.jsonl (resumable), report.md, PNGs, summary.csv.")],
    data: Annotated[Optional[Path], typer.Option(help="Data root holding one folder per marketplace (<data>/<id>/train.parquet ...), e.g. from `mcl data demo`.")] = None,
    esci_examples: Annotated[Optional[str], typer.Option(help="ESCI examples table (instead of --data); the order names locales.")] = None,
    esci_products: Annotated[Optional[str], typer.Option(help="ESCI products table (omit when the examples carry product columns).")] = None,
    methods: Annotated[Optional[str], typer.Option(help="Methods, comma separated (default: all): ad, ad-no-translation, fusion-no-distill, adapter-only, joint-fusion, sm, seq-ft, ewc, lwf, hat, replay.")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Seeds per method and order (default 2; --quick 1).")] = None,
    sweep_seeds: Annotated[Optional[int], typer.Option(help="How many of the seeds the fraction sweep runs for (default 1).")] = None,
    orders: Annotated[Optional[int], typer.Option(help="Sequence orders: the given one plus N-1 distinct random permutations (Table 2; default 1).")] = None,
    fractions: Annotated[Optional[str], typer.Option(help="Translation-fraction sweep of `ad` on the first order, '' to skip (default 0,0.1,0.3,0.5,1.0; --quick 0,0.3).")] = None,
    translate_fraction: Annotated[Optional[float], typer.Option(help="Fraction translated for every method that translates (default 0.3).")] = None,
    backend: Annotated[Optional[str], typer.Option(help="Translation backend: auto, opus-mt, ctranslate2, apertium. With auto and no route, runs go on untranslated with a warning (default auto).")] = None,
    encoder: Annotated[Optional[str], typer.Option(help="Encoder: hub id, local folder, or the embedded default.")] = None,
    quick: Annotated[bool, typer.Option(help="A smoke run: 1 seed, 64 pairs, 1 epoch per stage, max length 24, sweep 0,0.3 (explicit options still win).")] = False,
    pairs: Annotated[Optional[int], typer.Option(help="Train pairs per marketplace, whole queries, 0 = all (default 300; --quick 64).")] = None,
    eval_pairs: Annotated[Optional[int], typer.Option(help="Valid and test pairs per marketplace, 0 = all (default 200; --quick 64).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs per adapter stage, HAT's included (default 4).")] = None,
    fusion_epochs: Annotated[Optional[int], typer.Option(help="Epochs per fusion stage (default 2).")] = None,
    full_epochs: Annotated[Optional[int], typer.Option(help="Epochs per full fine-tuning stage (default 3).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Default 8.")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Tokens per pair (default 32; --quick 24).")] = None,
    adapter_lr: Annotated[Optional[float], typer.Option(help="Default 1e-3.")] = None,
    fusion_lr: Annotated[Optional[float], typer.Option(help="Default 1e-4.")] = None,
    full_lr: Annotated[Optional[float], typer.Option(help="Default 5e-5.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda (default from settings).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="First seed; the others follow it (default settings' seed).")] = None,
    order_seed: Annotated[int, typer.Option(help="Seeds the random orders.")] = 0,
    mlflow: Annotated[bool, typer.Option(help="Log the report to MLflow (tracking URI from settings).")] = True,
    verbose: bool = False,
) -> None:
    """Run the continual-learning benchmark and write a report.

    Runs every method x seed x order on the same capped data (plus the `ad` translation-fraction sweep),
    appending each finished run to OUT/results.jsonl: rerun the same command after an interruption and
    finished runs are skipped. Then prints the paper-shaped table (per-marketplace ROC-AUC after the
    sequence, mean ± std, BWT, forgetting, trainable parameters, training time) and writes OUT/report.md
    with R heatmaps, ROC-AUC curves, the fraction sweep (Figure 4) and a performance section.

    Runs = methods x seeds x orders + (sweep fractions - 1) x sweep seeds. The knobs that size it, biggest
    first: --methods, --seeds, --pairs, --epochs/--fusion-epochs/--full-epochs, --max-length, --eval-pairs. On a GPU, at
    full scale: --pairs 0 --eval-pairs 0 --epochs 5 --fusion-epochs 5 --full-epochs 3 --max-length 64 --batch-size 32
    --device cuda.
    """
    configure_logging(verbose)
    from tasks.benchmark import (
        BenchmarkConfig,
        BenchmarkData,
        check_methods,
        log_report_to_mlflow,
        method_names,
        run_benchmark,
        summarise,
        write_report,
    )
    from tasks.data import DataValidationError
    from tasks.learner import resolve_settings_encoder
    from tasks.settings import get_settings

    if (data is None) == (esci_examples is None):
        raise typer.BadParameter("give either --data (a data root) or --esci-examples (the ESCI layout)")
    settings = get_settings()
    ids = _ids(order)
    chosen = _ids(methods) if methods else method_names()
    given = dict(methods=tuple(chosen), seeds=seeds, sweep_seeds=sweep_seeds, orders=orders, order_seed=order_seed,
                 fractions=None if fractions is None else _fractions(fractions), translate_fraction=translate_fraction,
                 translation_backend=backend, max_train_pairs=pairs, max_eval_pairs=eval_pairs, epochs=epochs,
                 fusion_epochs=fusion_epochs,
                 full_epochs=full_epochs, batch_size=batch_size, max_length=max_length, adapter_lr=adapter_lr,
                 fusion_lr=fusion_lr, full_lr=full_lr, device=device or settings.device,
                 base_seed=settings.seed if seed is None else seed, encoder=encoder or settings.encoder)
    given = {k: v for k, v in given.items() if v is not None}
    try:
        check_methods(chosen)
        cfg = BenchmarkConfig.quick(ids, **given) if quick else BenchmarkConfig(order=tuple(ids), **given)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
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


def _summary_table(summary):
    from rich.table import Table

    table = Table(title="after the whole sequence: test ROC-AUC, mean ± std over runs")
    table.add_column("method", style="bold")
    for column in summary.table.columns:
        table.add_column(str(column), justify="right")
    for method, row in summary.table.iterrows():
        table.add_row(str(method), *(str(v) for v in row))
    return table

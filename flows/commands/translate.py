"""``mcl translate``: stage 1 of the method on a file, one table per older language written to a folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.console import configure_logging, console


def _write_atomic(path: Path, write) -> None:
    """Write beside the target and rename: a crash never leaves a half-written table for training to read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _report_table(reports: dict):
    from rich.table import Table

    table = Table(title="translated subsets")
    for name in ("to", "route", "backend", "rows", "texts", "new", "cached", "cut", "empty", "s"):
        table.add_column(name, justify="left" if name in ("to", "route", "backend") else "right")
    for lang, r in reports.items():
        table.add_row(lang, r.route, r.backends, f"{r.rows:,}", f"{r.unique_texts:,}", f"{r.translated:,}",
                      f"{r.cache_hits:,}", f"{r.truncated:,}", f"{sum(r.empty.values()):,}", f"{r.seconds:.1f}")
    return table


def translate(
    data: Annotated[str, typer.Option(help="The new marketplace's table (.parquet/.csv/.jsonl; local or s3://).")],
    from_: Annotated[str, typer.Option("--from", help="Its language (BCP-47), e.g. es.")],
    to: Annotated[str, typer.Option(help="Older marketplaces' languages, comma separated, e.g. en,fr.")],
    out: Annotated[Path, typer.Option(help="Folder for <language>.parquet (what `mcl train-sequence --translated` reads as <dir>/<new id>/).")],
    fraction: Annotated[Optional[float], typer.Option(help="Share of pairs to translate, in (0, 1]; whole queries, label ratio kept (default: the learner's translation.fraction).")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto, opus-mt, ctranslate2 or apertium (default: the learner's translation.backend).")] = None,
    model: Annotated[Optional[list[str]], typer.Option(help="A local model: SRC-TGT=PATH (Marian folder, CTranslate2 folder, .argosmodel) or a self-describing PATH. Repeatable.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Subset seed (default: the learner's seed).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda (default: the learner's device).")] = None,
    batch_size: int = 32,
    beams: Annotated[int, typer.Option(help="Beam size for neural backends (1 = greedy).")] = 1,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for neural backends (default: the libraries' own).")] = None,
    cache: Annotated[bool, typer.Option(help="Reuse and keep translations in the cache folder.")] = True,
    verbose: bool = False,
) -> None:
    """Translate a stratified subset of a marketplace into older marketplaces' languages (stage 1).

    Report: texts (unique strings), new (sent to a backend), cached, cut (truncated), empty (kept as is).
    """
    configure_logging(verbose)
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tasks.config import entry_learner
    from tasks.data import DataValidationError, read_table
    from tasks.settings import get_settings
    from tasks.translation import TranslationError, translate_subset

    settings = get_settings()
    learner = entry_learner("arrival")
    fraction = learner.translation.fraction if fraction is None else fraction
    targets = [t.strip() for t in to.split(",") if t.strip()]
    try:
        table = read_table(data, s3_endpoint_url=settings.s3_endpoint_url)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as bar:
            rows: dict[str, int] = {}

            def progress(target: str, done: int, total: int) -> None:
                if target not in rows:
                    rows[target] = bar.add_task(f"{from_} -> {target}", total=total)
                bar.update(rows[target], completed=done, total=total)

            result = translate_subset(
                table, from_, targets, fraction=fraction, seed=learner.seed if seed is None else seed,
                backend=backend or learner.translation.backend, cache_dir=settings.cache_dir / "translations" if cache else None, models=model or (),
                device=device or learner.device, batch_size=batch_size, num_beams=beams, threads=threads, source_name=data,
                progress=progress,
            )
    except (DataValidationError, TranslationError, ValueError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(1) from None
    for lang, frame in result.items():
        path = out / f"{lang}.parquet"
        _write_atomic(path, lambda tmp, frame=frame: frame.to_parquet(tmp, index=False))
        console.print(f"{path}: {len(frame):,} rows ({result.reports[lang].route})")
    report = {lang: r.as_dict() for lang, r in result.reports.items()}
    _write_atomic(out / "translation-report.json",
                  lambda tmp: tmp.write_text(json.dumps({"data": data, "from": from_, "fraction": fraction,
                                                         "reports": report}, indent=2)))
    console.print(_report_table(result.reports))

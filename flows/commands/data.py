"""``mcl data``: check marketplace data against the contract, and write the multilingual demo marketplaces."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.console import console

app = typer.Typer(help="Marketplace data: validate files against the contract, generate demo data.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)


def _balance_table(title: str, tables: dict, sources: dict[str, str]):
    from rich.table import Table

    table = Table(title=title)
    for name in ("split", "rows", "relevant (1)", "irrelevant (0)", "queries", "source"):
        table.add_column(name, justify="left" if name in ("split", "source") else "right",
                         overflow="fold" if name == "source" else "ellipsis")
    for split, frame in tables.items():
        positives = int(frame["label"].sum())
        table.add_row(split, f"{len(frame):,}", f"{positives:,} ({100 * positives / len(frame):.1f}%)",
                      f"{len(frame) - positives:,}", f"{frame['query'].nunique():,}", sources.get(split, ""))
    return table


def _is_table_file(path: str) -> bool:
    from tasks.data.contract import TABLE_SUFFIXES

    return any(path.lower().endswith(suffix) for suffix in TABLE_SUFFIXES)


@app.command()
def validate(
    path: Annotated[str, typer.Argument(help="A table file (.parquet/.csv/.jsonl) or a marketplace folder; local or s3://.")],
    language: Annotated[Optional[str], typer.Option(help="Language (BCP-47), e.g. es; overrides marketplace.json.")] = None,
    split: Annotated[str, typer.Option(help="For a single file: which split it is (train, valid, test).")] = "train",
    s3_endpoint_url: Annotated[Optional[str], typer.Option(help="S3-compatible endpoint (MinIO); default from settings.")] = None,
) -> None:
    """Check data against the contract; print rows, label balance, columns and warnings, or the one error (exit 1)."""
    from tasks.data import DataValidationError, load_marketplace_dir, read_table, validate_language, validate_table

    try:
        if _is_table_file(path):
            if language is not None:
                language = validate_language(language, file=path, column=None)
            table = validate_table(read_table(path, s3_endpoint_url=s3_endpoint_url), file=path, split=split)
            console.print(_balance_table(f"{path}" + (f" ({language})" if language else ""), {split: table},
                                         {split: path}))
            columns = list(table.columns)
            warnings: tuple[str, ...] = ()
        else:
            marketplace = load_marketplace_dir(path, language=language, s3_endpoint_url=s3_endpoint_url)
            tables = {"train": marketplace.train, "valid": marketplace.valid, "test": marketplace.test}
            console.print(_balance_table(f"marketplace {marketplace.id!r} (language {marketplace.language})", tables,
                                         marketplace.sources))
            columns = list(marketplace.train.columns)
            warnings = marketplace.warnings
    except DataValidationError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"columns: {', '.join(columns)}", highlight=False, soft_wrap=True)
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    console.print("[green]valid[/green]" + (f" with {len(warnings)} warning(s)" if warnings else ""))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder to write <out>/<language>/{train,valid,test}.parquet into.")],
    seed: Annotated[int, typer.Option(help="Same seed, byte-identical files.")] = 13,
    languages: Annotated[str, typer.Option(help="Comma-separated marketplaces (languages) to write.")] = "en,es,fr,de,ja",
    pairs: Annotated[int, typer.Option(help="Query-product pairs per marketplace (split 80/10/10 by query).")] = 3000,
) -> None:
    """Write multilingual demo marketplaces: shared product types and brands, a different category mix each."""
    from tasks.data import generate_demo

    wanted = [x.strip() for x in languages.split(",") if x.strip()]
    started = time.perf_counter()
    try:
        folders = generate_demo(out, languages=wanted, pairs_per_marketplace=pairs, seed=seed)
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    elapsed = time.perf_counter() - started
    for language, folder in folders.items():
        console.print(f"  {language}: {folder}", highlight=False)
    console.print(f"wrote {len(folders)} marketplaces of {pairs:,} pairs in {elapsed:.1f} s; see {out / 'README.md'}",
                  highlight=False)

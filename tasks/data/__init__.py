"""The marketplace data contract: readers (parquet/csv/jsonl, local or S3, ESCI), validation and demo data."""

from tasks.data.contract import SPLITS, DataValidationError, Marketplace
from tasks.data.demo import generate_demo
from tasks.data.esci import load_esci
from tasks.data.readers import (
    list_folder,
    load_data_root,
    load_marketplace,
    load_marketplace_dir,
    read_bytes,
    read_marketplace_file,
    read_table,
)
from tasks.data.validation import leakage_warnings, validate_language, validate_table

__all__ = [
    "SPLITS",
    "DataValidationError",
    "Marketplace",
    "generate_demo",
    "leakage_warnings",
    "list_folder",
    "load_data_root",
    "load_esci",
    "load_marketplace",
    "load_marketplace_dir",
    "read_bytes",
    "read_marketplace_file",
    "read_table",
    "validate_language",
    "validate_table",
]

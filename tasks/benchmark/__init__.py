"""The continual-learning benchmark (issue 6): every method × seed × order on the same data, the learner's
translation-fraction sweep, a paper-shaped summary, a markdown + PNG report and one MLflow run.

Plain functions, no Prefect: ``mcl benchmark`` (``flows/commands/benchmark.py``) calls them in order::

    data = BenchmarkData.load(root, cfg)
    run = run_benchmark(cfg, data, out, encoder=ref)
    summary = summarise(run.records)
    write_report(out, run.records, cfg, summary)
    log_report_to_mlflow(out, run.records, cfg, summary)
"""

from tasks.benchmark.config import (
    AD_METHOD,
    DEFAULT_FRACTIONS,
    FULL_FINE_TUNING,
    PLAIN_FUSION,
    BenchmarkConfig,
    RunSpec,
    benchmark_config,
    check_methods,
    method_names,
    plan_runs,
    random_orders,
)
from tasks.benchmark.report import log_report_to_mlflow, report_markdown, write_report
from tasks.benchmark.results import RESULTS_FILE, ResultsFile, RunRecord, StageRecord
from tasks.benchmark.runner import (
    BenchmarkData,
    BenchmarkRun,
    Translations,
    adapter_bank_folder,
    cap_table,
    method_config,
    method_learner,
    run_benchmark,
    translating,
)
from tasks.benchmark.summary import BenchmarkSummary, mean_std, summarise

__all__ = [
    "AD_METHOD", "DEFAULT_FRACTIONS", "FULL_FINE_TUNING", "PLAIN_FUSION", "RESULTS_FILE", "BenchmarkConfig",
    "BenchmarkData", "BenchmarkRun", "BenchmarkSummary", "ResultsFile", "RunRecord", "RunSpec", "StageRecord",
    "Translations", "adapter_bank_folder", "cap_table", "check_methods", "log_report_to_mlflow", "mean_std",
    "method_config", "method_names", "plan_runs", "random_orders", "report_markdown", "run_benchmark", "summarise",
    "benchmark_config", "method_learner", "translating", "write_report",
]

"""The benchmark: plan, resume, summary, report, MLflow and `mcl benchmark` end to end on tiny data."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.encoders import EncoderRef
from models.metrics import continual_metrics
from models.stages import StageReport
from models.training import FitResult
from tasks.benchmark import (
    BenchmarkConfig,
    BenchmarkData,
    RunRecord,
    RunSpec,
    log_report_to_mlflow,
    plan_runs,
    random_orders,
    run_benchmark,
    summarise,
    write_report,
)
from tasks.benchmark.results import ResultsFile
from tasks.data import generate_demo

ORDER = ("en", "es", "fr")
FAKE_ENCODER = EncoderRef(name="fake", path=Path("."), checksum="fake-checksum")
TRANSLATING = {"ad", "joint-fusion"}


def _translates(method: str) -> bool:
    return method in TRANSLATING


def _fit(params: int, seconds: float, examples: int = 100) -> FitResult:
    return FitResult(best_metric=0.7, best_epoch=1, epochs_run=1, stopped_early=False, trainable_parameters=params,
                     train_examples=examples, train_seconds=seconds, examples_per_second=examples / seconds)


@dataclass
class FakeResult:
    """What ``run_method`` returns (``models.methods.MethodResult``), built by hand."""

    method: str
    seed: int
    order: list[str]
    metrics: object
    arrival_seconds: list[float]
    reports: list
    trainable_parameters: int
    total_parameters: int = 1_000_000
    breaks_no_replay: bool = False


def fake_result(method: str, order, final: list[float], *, seed: int = 13, seconds=(1.0, 2.0, 3.0),
                params: int = 10_000, diagonal: float = 0.9, replay: bool = False) -> FakeResult:
    n = len(order)
    r = np.full((n, n), np.nan)
    for t in range(n):
        for k in range(t + 1):
            r[t, k] = diagonal if k == t else (diagonal + final[k]) / 2
    r[-1] = final
    stages = ["adapter"] + ["adapter", "fusion"] * (n - 1) if method.startswith(("ad", "fusion")) else ["full"] * n
    reports = [StageReport(s, order[min(i, n - 1)], _fit(params, 0.5 if s == "adapter" else 1.0), 1_000_000)
               for i, s in enumerate(stages)]
    return FakeResult(method, seed, list(order), continual_metrics(r, list(order)), list(seconds), reports, params,
                      breaks_no_replay=replay)


def record(method: str, final: list[float], *, seed: int = 13, order=ORDER, fraction=None, main=True,
           sweep=False, **kw) -> RunRecord:
    spec = RunSpec(method, seed, tuple(order), fraction, main=main, sweep=sweep)
    return RunRecord.from_result(spec, "hash", fake_result(method, order, final, seed=seed, **kw))


@dataclass
class CountingRunner:
    """A stand-in for ``run_method`` that counts calls and fails on demand (an interrupted benchmark)."""

    calls: list = field(default_factory=list)
    fail_at: int | None = None

    def __call__(self, name, encoder, marketplaces, learner, baselines=None, translated_for=None):
        seed = learner.seed
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt
        order = [m.spec.id for m in marketplaces]
        translated = {m.spec.id: len(translated_for(m, [x.spec for x in marketplaces[:t]]))
                      for t, m in enumerate(marketplaces) if t and translated_for}
        self.calls.append((name, seed, tuple(order), translated))
        final = [0.6 + 0.01 * (seed % 7) + 0.05 * k for k in range(len(order))]
        return fake_result(name, order, final, seed=seed)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-demo")
    generate_demo(root, languages=ORDER, pairs_per_marketplace=200, seed=3)
    return root


# --------------------------------------------------------------------------- plan
def test_random_orders_are_deterministic_distinct_and_start_with_the_given_order():
    first = random_orders(["en", "es", "fr", "de"], 5, seed=7)
    assert first == random_orders(["en", "es", "fr", "de"], 5, seed=7)
    assert first[0] == ("en", "es", "fr", "de")
    assert len(set(first)) == 5 and all(sorted(o) == ["de", "en", "es", "fr"] for o in first)
    assert first != random_orders(["en", "es", "fr", "de"], 5, seed=8)
    assert random_orders(ORDER, 1) == [ORDER]
    with pytest.raises(ValueError, match="only 6 orders"):
        random_orders(ORDER, 7)


def test_plan_is_methods_by_seeds_by_orders_plus_the_fraction_sweep():
    cfg = BenchmarkConfig(order=ORDER, methods=("ad", "seq-ft"), seeds=2, orders=2, fractions=(0.0, 0.3, 1.0),
                          sweep_seeds=2)
    plan = plan_runs(cfg, _translates)
    main = [s for s in plan if s.main]
    assert len(main) == 2 * 2 * 2
    assert {s.fraction for s in main if s.method == "ad"} == {0.3}
    assert {s.fraction for s in main if s.method == "seq-ft"} == {None}
    sweep = [s for s in plan if s.sweep]
    first = random_orders(ORDER, 2)[0]
    assert sorted((s.seed, s.fraction) for s in sweep) == [(13, 0.0), (13, 0.3), (13, 1.0),
                                                           (14, 0.0), (14, 0.3), (14, 1.0)]
    assert all(s.order == first and s.method == "ad" for s in sweep)
    # the main run at 0.3 is also the sweep's 0.3 point: 8 main runs + 4 sweep-only runs
    assert len(plan) == 12 and len({s.key("h") for s in plan}) == 12
    assert [s for s in plan if s.sweep and s.main and s.order == first and s.fraction == 0.3]
    # by default the sweep runs for the first seed only: 8 main runs + 2 sweep-only runs
    one = plan_runs(cfg.model_copy(update={"sweep_seeds": 1}), _translates)
    assert sorted((s.seed, s.fraction) for s in one if s.sweep) == [(13, 0.0), (13, 0.3), (13, 1.0)]
    assert len(one) == 10


def test_the_cpu_preset_names_its_methods_and_all_means_every_method(tmp_path):
    from models.methods import METHODS
    from tasks.benchmark import benchmark_config, method_learner

    cfg = benchmark_config(ORDER)
    assert cfg.methods == ("ad", "ad-paper", "ad-no-translation", "fusion-no-distill", "adapter-only", "probe",
                           "joint-fusion", "sm")
    # the sweep's points are runs of the plan anyway (ad-no-translation, ad), and two one-thread workers share them
    assert (cfg.fractions, cfg.workers) == ((0.0, 0.3), 2)
    assert len(plan_runs(cfg, lambda m: m.startswith("ad") and m != "ad-no-translation")) == 2 * len(cfg.methods) + 1
    # 300 pairs at batch 8: 8 epochs (304 steps), chosen on validation in benchmarks/reports/adapter-steps-2cpu
    assert (cfg.learner.adapter.epochs, cfg.learner.adapter.batch_size, cfg.max_train_pairs) == (8, 8, 300)
    # and the fusion 4 epochs (152 steps), ahead of 2 on validation in benchmarks/reports/fusion-knobs-2cpu
    assert (cfg.learner.fusion.epochs, cfg.learner.fusion.batch_size) == (4, 8)
    assert benchmark_config(ORDER, ["all"]).methods == tuple(METHODS)
    assert benchmark_config(ORDER, ["sm", "ad"]).methods == ("sm", "ad")
    bad = tmp_path / "bench.toml"
    bad.write_text('methods = ["ad", "nope"]\n')
    with pytest.raises(ValueError, match=r"unknown method\(s\) nope"):
        benchmark_config(ORDER, file=bad)
    # ad-paper is the learner under the paper preset, on top of the benchmark's sizes
    paper = method_learner(cfg.learner, "ad-paper")
    assert (paper.reduction_factor, paper.pooling, paper.adapter.epochs, paper.fusion.epochs) == (16, "cls", 5, 5)
    assert (paper.distill.layer_reduction, paper.distill.head_init, paper.distill.weight) == ("sum", "random", 1.0)
    assert paper.max_length == cfg.learner.max_length and paper.fusion.batch_size == cfg.learner.fusion.batch_size
    assert method_learner(cfg.learner, "ad") == cfg.learner


def test_config_hash_follows_the_knobs_not_the_plan():
    a = BenchmarkConfig(order=ORDER, methods=("ad",), seeds=1)
    assert a.run_hash("enc") == BenchmarkConfig(order=ORDER, methods=("ad", "seq-ft"), seeds=3).run_hash("enc")
    assert a.run_hash("enc") != BenchmarkConfig(order=ORDER, methods=("ad",), learner={"adapter": {"epochs": 3}}).run_hash("enc")
    assert a.run_hash("enc") == BenchmarkConfig(order=ORDER, methods=("ad",), sweep_seeds=2).run_hash("enc")
    assert a.run_hash("enc") != a.run_hash("other-encoder")
    with pytest.raises(ValueError, match="at least two marketplaces"):
        BenchmarkConfig(order=("en",))


# --------------------------------------------------------------------------- summary
def test_summarise_gives_mean_and_sample_std_over_seeds():
    records = [
        record("ad", [0.70, 0.80, 0.90], seed=13, seconds=(1.0, 2.0, 3.0)),
        record("ad", [0.80, 0.80, 0.90], seed=14, seconds=(1.0, 2.0, 5.0)),
        record("ad", [0.90, 0.80, 0.90], seed=15, seconds=(1.0, 2.0, 7.0)),
        record("seq-ft", [0.50, 0.60, 0.95], seed=13, seconds=(5.0, 6.0, 7.0), params=900_000, replay=False),
    ]
    summary = summarise(records)
    stats = summary.stats
    assert stats.loc["ad", "auc.en.mean"] == pytest.approx(0.80)
    assert stats.loc["ad", "auc.en.std"] == pytest.approx(0.10)  # sample std of 0.7, 0.8, 0.9
    assert stats.loc["ad", "auc.es.std"] == pytest.approx(0.0)
    averages = [np.mean(x) for x in ([0.7, 0.8, 0.9], [0.8, 0.8, 0.9], [0.9, 0.8, 0.9])]
    assert stats.loc["ad", "average.mean"] == pytest.approx(np.mean(averages))
    assert stats.loc["ad", "average.std"] == pytest.approx(np.std(averages, ddof=1))
    assert stats.loc["ad", "train_seconds.mean"] == pytest.approx(np.mean([6, 8, 10]))
    bwt = [np.mean([f[0] - 0.9, f[1] - 0.9]) for f in ([0.7, 0.8], [0.8, 0.8], [0.9, 0.8])]
    assert stats.loc["ad", "bwt.mean"] == pytest.approx(np.mean(bwt))
    assert np.isnan(stats.loc["seq-ft", "auc.en.std"])  # one run has no spread
    table = summary.table
    assert list(table.columns[:4]) == ["en", "es", "fr", "average"]
    assert table.loc["ad", "en"] == "0.800 ± 0.100"
    assert table.loc["seq-ft", "en"] == "0.500"
    assert table.loc["ad", "runs"] == "3"
    assert table.loc["seq-ft", "trainable params"] == "900.00k (90.0%)"
    # the learner versus full fine-tuning, arrival by arrival
    assert summary.full_reference == "seq-ft"
    assert summary.speedup["cheaper by"].tolist() == pytest.approx([5.0, 3.0, 7.0 / 5.0])
    assert summary.matrices["ad"].loc["fr", "en"] == pytest.approx(0.80)


def test_summarise_fraction_sweep_gain_is_over_the_smallest_fraction():
    records = [record("ad", [0.70, 0.70, 0.9], fraction=0.0, main=False, sweep=True, seconds=(1, 1, 1)),
               record("ad", [0.80, 0.76, 0.9], fraction=0.3, sweep=True, seconds=(1, 2, 3)),
               record("ad", [0.82, 0.80, 0.9], fraction=1.0, main=False, sweep=True, seconds=(1, 4, 6))]
    summary = summarise(records)
    assert summary.fractions.index.tolist() == [0.0, 0.3, 1.0]
    assert summary.fractions["gain"].tolist() == pytest.approx([0.0, 0.08, 0.11])
    assert summary.fractions["train_seconds"].tolist() == pytest.approx([3.0, 6.0, 11.0])
    assert summary.translation_missing, "no rows were translated at fraction 0.3 in these records"
    assert summary.stats.index.tolist() == ["ad"] and summary.stats.loc["ad", "runs"] == 1


# --------------------------------------------------------------------------- report and MLflow
def _full_records():
    out = []
    for seed in (13, 14):
        out.append(record("ad", [0.80, 0.82, 0.90], seed=seed, fraction=0.3, sweep=True, seconds=(1, 2, 2)))
        out.append(record("ad", [0.78, 0.80, 0.90], seed=seed, fraction=0.0, main=False, sweep=True))
        out.append(record("fusion-no-distill", [0.70, 0.75, 0.91], seed=seed, seconds=(1, 1.5, 1.5)))
        out.append(record("ad-no-translation", [0.75, 0.78, 0.90], seed=seed))
        out.append(record("seq-ft", [0.55, 0.60, 0.93], seed=seed, seconds=(6, 7, 8), params=900_000))
        out.append(record("replay", [0.85, 0.85, 0.92], seed=seed, params=900_000, replay=True))
    return out


def test_report_holds_the_table_and_names_every_png(tmp_path):
    records = _full_records()
    cfg = BenchmarkConfig(order=ORDER, methods=("ad", "fusion-no-distill", "ad-no-translation", "seq-ft", "replay"),
                          seeds=2, fractions=(0.0, 0.3), encoder="tiny")
    path = write_report(tmp_path, records, cfg)
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert "| method | en | es | fr | average | BWT | forgetting | valid average | trainable params | train time (s) | runs |" in text
    assert "| ad | 0.800 ± 0.000 | 0.820 ± 0.000 | 0.900 ± 0.000 |" in text
    assert "| replay † |" in text and "breaks the no-replay" in text
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    for method in ("ad", "fusion-no-distill", "ad-no-translation", "seq-ft", "replay"):
        assert f"heatmap_{method}.png" in pngs and f"curves_{method}.png" in pngs
    assert {"translation_fraction.png", "trainable_parameters.png", "arrival_seconds.png",
            "examples_per_second.png"} <= set(pngs)
    for name in pngs:
        assert f"]({name})" in text, f"{name} is not in the report"
        assert (tmp_path / name).stat().st_size > 1000
    assert "## Ablations" in text and "`fusion-no-distill`" in text and "`ad-no-translation`" in text
    assert "## Translation fraction (Figure 4)" in text
    assert "Goal ≥ 3x cheaper for every arrival after the first: **met** (mean 3.75x)" in text
    assert "takes 1.25x the time of `fusion-no-distill`" in text
    assert "### Examples/s per stage" in text
    assert (tmp_path / "summary.csv").is_file()


def test_mlflow_run_holds_metrics_params_and_report(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    records = _full_records()
    cfg = BenchmarkConfig(order=ORDER, methods=("ad", "seq-ft"), seeds=2, fractions=(0.0, 0.3))
    write_report(tmp_path / "out", records, cfg)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = log_report_to_mlflow(tmp_path / "out", records, cfg, tracking_uri=uri,
                                  artifact_location=str(tmp_path / "artifacts"))
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.metrics["ad.average.mean"] == pytest.approx(np.mean([0.80, 0.82, 0.90]))
    assert run.data.metrics["seq-ft.trainable_parameters"] == 900_000
    assert "speedup_vs_full.mean" in run.data.metrics and "ad_overhead.train_seconds_ratio" in run.data.metrics
    assert [m.value for m in client.get_metric_history(run_id, "sweep.fraction")] == [0.0, 0.3]
    assert run.data.params["seeds"] == "2" and run.data.params["order"] == "en,es,fr"
    artifacts = {Path(a.path).name for a in client.list_artifacts(run_id, "benchmark")}
    assert {"report.md", "heatmap_ad.png", "translation_fraction.png", "summary.csv"} <= artifacts
    mlflow.set_tracking_uri(None)


# --------------------------------------------------------------------------- running and resuming
def _cfg(**kw) -> BenchmarkConfig:
    base = dict(order=ORDER, methods=("ad", "seq-ft"), seeds=2, fractions=(0.0, 0.3), sweep_seeds=2, max_train_pairs=60,
                max_eval_pairs=40)
    return BenchmarkConfig(**{**base, **kw})


def _no_translation(monkeypatch):
    """translate_step stand-in: a fraction of the train table, tagged per language, counting calls."""
    calls = []

    def fake(train, source, targets, *, fraction, seed, backend, cache_dir):
        calls.append((source, tuple(targets), fraction, seed))
        n = int(round(fraction * len(train)))
        return {lang: train.head(n) for lang in sorted(set(targets) - {source})} if n else {}

    monkeypatch.setattr("tasks.steps.translate_step", fake)
    return calls


def test_caps_keep_whole_queries_and_both_labels(demo_root):
    data = BenchmarkData.load(demo_root, _cfg())
    for m in data.marketplaces.values():
        assert len(m.train) <= 66 and len(m.test) <= 44 and set(m.test["label"]) == {0, 1}
    assert data.hashes() == BenchmarkData.load(demo_root, _cfg()).hashes()


def test_resume_skips_finished_runs_and_a_new_knob_reruns(demo_root, tmp_path, monkeypatch):
    translations = _no_translation(monkeypatch)
    cfg = _cfg()
    data = BenchmarkData.load(demo_root, cfg)
    runner = CountingRunner(fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(cfg, data, tmp_path, encoder=FAKE_ENCODER, runner=runner, translation_uses=_translates,
                      translation_cache=tmp_path / "tc", progress=False)
    assert len(ResultsFile(tmp_path).read()) == 3
    runner.fail_at = None
    again = run_benchmark(cfg, data, tmp_path, encoder=FAKE_ENCODER, runner=runner, translation_uses=_translates,
                          translation_cache=tmp_path / "tc", progress=False)
    # plan: ad@0.3 and seq-ft for 2 seeds, plus ad@0 for 2 seeds = 6 runs, 3 done before the interruption
    assert (again.ran, again.skipped) == (3, 3) and len(runner.calls) == 6
    assert Counter(c[0] for c in runner.calls) == {"ad": 4, "seq-ft": 2}
    assert len(again.records) == 6 and len(ResultsFile(tmp_path).read()) == 6
    done = run_benchmark(cfg, data, tmp_path, encoder=FAKE_ENCODER, runner=runner, translation_uses=_translates,
                         translation_cache=tmp_path / "tc", progress=False)
    assert (done.ran, done.skipped) == (0, 6) and len(runner.calls) == 6
    # ad at 0.3 translated es into en, and fr into en and es; fraction 0 translated nothing
    ad = [c for c in runner.calls if c[0] == "ad"]
    assert {tuple(sorted(c[3].items())) for c in ad} == {(("es", 1), ("fr", 2)), (("es", 0), ("fr", 0))}
    assert {c[2:] for c in translations} == {(0.3, 13), (0.3, 14)}, "fraction 0 needs no translator"
    assert len(translations) == 4, "each (arrival, older languages, fraction, seed) is translated once"
    assert sorted(c[:2] for c in translations) == [("es", ("en",))] * 2 + [("fr", ("en", "es"))] * 2
    changed = run_benchmark(_cfg(learner={"adapter": {"epochs": 3}}), data, tmp_path, encoder=FAKE_ENCODER, runner=runner,
                            translation_uses=_translates,
                            translation_cache=tmp_path / "tc", progress=False)
    assert changed.ran == 6 and len(runner.calls) == 12


def test_a_sweep_point_that_is_an_ablation_is_recorded_from_it_not_trained_again(demo_root, tmp_path, monkeypatch):
    """``ad`` at fraction 0 is ``ad-no-translation`` (same class, same configuration): one training run, two records."""
    _no_translation(monkeypatch)
    cfg = _cfg(methods=("ad", "ad-no-translation"), seeds=1, sweep_seeds=1, fractions=(0.0, 0.3))
    data = BenchmarkData.load(demo_root, cfg)
    runner = CountingRunner()
    kw = dict(encoder=FAKE_ENCODER, runner=runner, progress=False, translation_cache=tmp_path / "tc")
    first = run_benchmark(cfg, data, tmp_path, **kw)
    assert [c[0] for c in runner.calls] == ["ad", "ad-no-translation"], "ad@0 was trained again"
    by_key = {r.key.split("|hash")[0]: r for r in first.records}
    sweep0 = next(r for r in first.records if r.method == "ad" and r.fraction == 0.0)
    ablation = next(r for r in first.records if r.method == "ad-no-translation")
    assert sweep0.matrix == ablation.matrix and sweep0.arrival_seconds == ablation.arrival_seconds
    assert (sweep0.sweep, sweep0.main, ablation.main) == (True, False, True) and len(by_key) == 3
    stored = {r.key: r for r in ResultsFile(tmp_path).read()}
    assert stored[sweep0.key].method == "ad" and stored[sweep0.key].fraction == 0.0
    again = run_benchmark(cfg, data, tmp_path, **kw)
    assert (again.ran, again.skipped, len(runner.calls)) == (0, 3, 2)
    other = run_benchmark(_cfg(methods=("ad", "fusion-no-distill"), seeds=1, sweep_seeds=1, fractions=(0.0,)),
                          data, tmp_path / "other", **kw)
    assert other.ran == 3 and [c[0] for c in runner.calls[2:]] == ["ad", "fusion-no-distill", "ad"], \
        "λ = 0 is another configuration: trained"


def test_a_torn_last_line_reruns_only_that_run(demo_root, tmp_path, monkeypatch):
    _no_translation(monkeypatch)
    cfg = _cfg(methods=("seq-ft",), fractions=())
    data = BenchmarkData.load(demo_root, cfg)
    runner = CountingRunner()
    kw = dict(encoder=FAKE_ENCODER, runner=runner, translation_uses=_translates,
              translation_cache=tmp_path / "tc", progress=False)
    run_benchmark(cfg, data, tmp_path, **kw)
    path = tmp_path / "results.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    second = run_benchmark(cfg, data, tmp_path, **kw)
    assert second.ran == 1 and len(runner.calls) == 3
    assert [r.seed for r in ResultsFile(tmp_path).read()] == [13, 14]
    assert json.loads(path.read_text().splitlines()[-1])["seed"] == 14


def test_a_failed_run_stops_the_plan_keeps_what_finished_and_names_itself(demo_root, tmp_path, monkeypatch, caplog):
    """A run that raises: the runs that ended are in results.jsonl, nothing new starts, the error reaches the
    caller, and the log line names the run; the rerun trains only what is missing."""
    _no_translation(monkeypatch)
    cfg = _cfg(methods=("seq-ft",), fractions=())
    data = BenchmarkData.load(demo_root, cfg)

    class Broken(CountingRunner):
        def __call__(self, name, encoder, marketplaces, learner, baselines=None, translated_for=None):
            if learner.seed == 14:
                raise ValueError("out of memory in fusion")
            return super().__call__(name, encoder, marketplaces, learner, baselines, translated_for)

    kw = dict(encoder=FAKE_ENCODER, translation_uses=_translates, translation_cache=tmp_path / "tc", progress=False)
    with caplog.at_level("ERROR"), pytest.raises(ValueError, match="out of memory in fusion"):
        run_benchmark(cfg, data, tmp_path, runner=Broken(), **kw)
    assert [r.seed for r in ResultsFile(tmp_path).read()] == [13]
    assert "seq-ft seed 14 order en>es>fr failed: out of memory in fusion" in caplog.text
    again = CountingRunner()
    assert run_benchmark(cfg, data, tmp_path, runner=again, **kw).ran == 1 and [c[1] for c in again.calls] == [14]


def test_two_worker_processes_record_what_one_process_does_and_share_the_adapters(demo_root, tmp_path, monkeypatch,
                                                                                 tiny_encoder):
    """The real learner in two spawned workers: the same R matrices as in this process, every record in the file
    once, and each seed's adapters trained once for both methods (adapter-only reports the very training time
    of ad's adapters: it loaded them from the bank another process filled)."""
    _no_translation(monkeypatch)
    fast = {"epochs": 1, "batch_size": 16}
    cfg = _cfg(methods=("ad", "adapter-only"), fractions=(), max_train_pairs=48, max_eval_pairs=32,
               learner={"adapter": fast, "fusion": fast, "max_length": 16, "device": "cpu"})
    data = BenchmarkData.load(demo_root, cfg)
    kw = dict(encoder=tiny_encoder, progress=False, translation_cache=tmp_path / "tc")
    inline = run_benchmark(cfg, data, tmp_path / "inline", **kw)
    pooled = run_benchmark(cfg.model_copy(update={"workers": 2}), data, tmp_path / "pooled", **kw)
    assert pooled.ran == 4 and len(ResultsFile(tmp_path / "pooled").read()) == 4
    for one, two in zip(inline.records, pooled.records, strict=True):
        assert (one.method, one.seed) == (two.method, two.seed)
        np.testing.assert_allclose(two.r(), one.r(), atol=1e-6)
    by_run = {(r.method, r.seed): [s.train_seconds for s in r.stages if s.stage == "adapter"] for r in pooled.records}
    for seed in (13, 14):
        assert by_run["adapter-only", seed] == by_run["ad", seed] and len(by_run["ad", seed]) == 3
    assert by_run["ad", 13] != by_run["ad", 14]
    assert len(list((tmp_path / "pooled" / "adapters").glob("*/*.pt"))) == 6


# --------------------------------------------------------------------------- mcl benchmark
@pytest.fixture()
def cli_env(isolated_cache, tiny_encoder):
    return isolated_cache


def _cli(*args: str):
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, ["benchmark", *args], catch_exceptions=False, env={"COLUMNS": "250"})


def test_cli_runs_the_learner_and_full_fine_tuning_end_to_end(cli_env, demo_root, tiny_encoder):
    out = cli_env / "bench"
    sets = ["seeds=1", "fractions=[0]", "translation.fraction=0", "max_train_pairs=40", "max_eval_pairs=40",
            "max_length=16", "adapter.batch_size=16", "fusion.batch_size=16", "baselines.full.batch_size=16",
            "device=cpu"]
    args = ["--data", str(demo_root), "--order", "en,es", "--methods", "ad,seq-ft",
            *(x for s in sets for x in ("--set", s)), "--encoder", str(tiny_encoder.path), "--out", str(out)]
    result = _cli(*args)
    assert result.exit_code == 0, result.output
    assert "2 runs now, 0 from earlier" in result.output and "report written to" in result.output, result.output
    assert "MLflow run" in result.output
    records = ResultsFile(out).read()
    assert sorted(r.method for r in records) == ["ad", "seq-ft"]
    assert all(len(r.matrix) == 2 and 0 <= r.average <= 1 and len(r.arrival_seconds) == 2 for r in records)
    ad, full = sorted(records, key=lambda r: r.method)
    assert ad.trainable_parameters < full.trainable_parameters
    assert [s.stage for s in ad.stages] == ["adapter", "adapter", "fusion"]
    text = (out / "report.md").read_text()
    assert "| ad |" in text and "| seq-ft |" in text and "heatmap_ad.png" in text and "cheaper by" in text
    config = json.loads((out / "benchmark.json").read_text())
    assert config["config"]["order"] == ["en", "es"] and len(config["plan"]) == 2
    assert config["config"]["learner"]["max_length"] == 16 and config["config"]["baselines"]["full"]["batch_size"] == 16
    again = _cli(*args, "--no-mlflow")
    assert again.exit_code == 0 and "0 runs now, 2 from earlier" in again.output


def test_cli_bad_data_is_one_clear_error_before_any_training(cli_env, tiny_encoder):
    data = cli_env / "demo"
    generate_demo(data, languages=("en", "es"), pairs_per_marketplace=200, seed=3)
    valid = pd.read_parquet(data / "es" / "valid.parquet")
    valid.loc[4, "label"] = 7
    valid.to_parquet(data / "es" / "valid.parquet")
    result = _cli("--data", str(data), "--order", "en,es", "--methods", "ad", "--encoder", str(tiny_encoder.path),
                  "--out", str(cli_env / "bench"))
    assert result.exit_code == 1
    assert "valid.parquet" in result.output and "row 5" in result.output and "'label'" in result.output
    assert result.output.count("error:") == 1
    assert not (cli_env / "bench" / "results.jsonl").exists()


def test_cli_rejects_unknown_methods_and_bad_sizes(cli_env, demo_root):
    result = _cli("--data", str(demo_root), "--order", "en,es", "--methods", "ad,nope", "--out", str(cli_env / "b"))
    assert result.exit_code == 2 and "unknown method(s) nope" in result.output
    result = _cli("--data", str(demo_root), "--order", "en", "--out", str(cli_env / "b"))
    assert result.exit_code == 2 and "at least two marketplaces" in result.output
    result = _cli("--data", str(demo_root), "--order", "en,es", "--set", "fusion.epochs=0", "--out", str(cli_env / "b"))
    assert result.exit_code == 2 and "learner.fusion.epochs = 0" in result.output


def test_esci_layout_loads_as_capped_marketplaces(tmp_path):
    rows = []
    for locale, words in (("us", ["red shoe", "blue lamp"]), ("es", ["zapato rojo", "lampara azul"])):
        for q in range(40):
            for p in range(4):
                rows.append({"query_id": f"{locale}{q}", "query": f"{words[q % 2]} {q}", "product_id": f"P{q}-{p}",
                             "product_locale": locale, "esci_label": "ESCI"[p], "product_title": f"item {q} {p}",
                             "split": "test" if q >= 30 else "train"})
    path = tmp_path / "examples.parquet"
    pd.DataFrame(rows).to_parquet(path)
    cfg = BenchmarkConfig(order=("us", "es"), max_train_pairs=40, max_eval_pairs=20)
    data = BenchmarkData.from_esci(path, None, cfg)
    assert [(m.id, m.language) for m in data.marketplaces.values()] == [("us", "en"), ("es", "es")]
    for m in data.marketplaces.values():
        assert len(m.train) == 40 and len(m.test) == 20 and set(m.train["label"]) == {0, 1}


def test_cli_retraining_comparison_runs_the_joint_methods_from_one_champion(cli_env, demo_root, tiny_encoder):
    from tasks.benchmark.retraining import RESULTS, fresh_and_old, retraining_table

    out = cli_env / "retraining"
    sets = ["seeds=1", "max_train_pairs=40", "max_eval_pairs=40", "max_length=16", "adapter.batch_size=16",
            "adapter.epochs=1", "fusion.batch_size=16", "fusion.epochs=1", "device=cpu", "retrain.eval_every=2",
            "retrain.patience=1", "retrain.max_steps=8"]
    args = ["--data", str(demo_root), "--order", "en,es", "--retraining", "60,30", "--methods", "uniform,async-kd",
            *(x for s in sets for x in ("--set", s)), "--encoder", str(tiny_encoder.path), "--out", str(out)]
    result = _cli(*args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]
    assert [r["method"] for r in records] == ["uniform", "async-kd"]
    assert len({r["key"].split("-")[0] for r in records}) == 1 and len(list(out.glob("champion-*"))) == 1
    assert all(r["sizes"] == {"en": 60, "es": 30} and r["steps"] <= 8 for r in records)
    (kd,) = [r for r in records if r["method"] == "async-kd"]
    assert kd["switch_step"]["en"] is not None or kd["stopped"] == "step budget"
    text = (out / "retraining.md").read_text()
    assert "| uniform (best checkpoint per marketplace) |" in text and "retraining-async-kd.png" in text
    assert (out / "retraining-async-kd.png").is_file() and "MLflow run" in result.output
    table = retraining_table(records)
    assert table.loc["uniform", "average"] == "+0.0000" and table.loc["async-kd", "steps"] == str(kd["steps"])
    again = _cli(*args, "--no-mlflow")  # every run is on record: nothing trains again
    assert again.exit_code == 0 and len((out / RESULTS).read_text().splitlines()) == 2
    # the variant without the rewind: only it trains, and the report compares it with the runs on record
    variant = _cli(*args, "--no-mlflow", "--set", "retrain.rewind=false")
    assert variant.exit_code == 0, variant.output
    lines = [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]
    assert [r["method"] for r in lines] == ["uniform", "async-kd", "async-kd (no rewind)"]
    assert lines[-1]["retrain"]["rewind"] is False
    text = (out / "retraining.md").read_text()
    assert "| async-kd |" in text and "| async-kd (no rewind) |" in text
    assert (out / "retraining-async-kd-no-rewind.png").is_file()
    other_budget = _cli(*[a if a != "retrain.max_steps=8" else "retrain.max_steps=6" for a in args], "--no-mlflow",
                        "--methods", "uniform")
    assert other_budget.exit_code == 0 and "async-kd" not in (out / "retraining.md").read_text()
    # fresh rows and the champion's old rows never overlap
    train = pd.read_parquet(demo_root / "en" / "train.parquet")
    fresh, old = fresh_and_old(train, 60, 40, 13)
    assert not set(zip(fresh["query"], fresh["product_title"])) & set(zip(old["query"], old["product_title"]))
    bad = _cli("--data", str(demo_root), "--order", "en,es", "--retraining", "60", "--out", str(out))
    assert bad.exit_code == 2 and "one whole number of fresh rows per marketplace" in bad.output


def test_retraining_table_is_the_change_over_uniform_final_per_seed():
    from tasks.benchmark.retraining import ORACLE, retraining_table

    def rec(method, seed, test, oracle=None, steps=100):
        return {"method": method, "seed": seed, "test": test, "oracle_test": oracle, "steps": steps,
                "best_valid": {"a": 0.9, "b": 0.8}, "final_valid": {"a": 0.89, "b": 0.8}}

    records = [rec("uniform", 1, {"a": 0.80, "b": 0.70}, {"a": 0.82, "b": 0.70}),
               rec("uniform", 2, {"a": 0.90, "b": 0.60}, {"a": 0.90, "b": 0.62}),
               rec("async-kd", 1, {"a": 0.81, "b": 0.72}, steps=80), rec("async-kd", 2, {"a": 0.93, "b": 0.60}, steps=60)]
    table = retraining_table(records)
    assert table.loc["async-kd", "a"] == "+0.0200 ± 0.0100"  # +0.01 and +0.03
    assert table.loc["async-kd", "b"] == "+0.0100 ± 0.0100"
    assert table.loc["async-kd", "average"] == "+0.0150 ± 0.0000"
    assert table.loc["async-kd", "steps"] == "70"
    assert table.loc[ORACLE, "a"] == "+0.0100 ± 0.0100"
    assert table.loc["async-kd", "final below best valid (max)"] == "0.0100 ± 0.0000"


def test_the_no_rewind_variant_is_a_row_of_its_own_and_leaves_the_baselines_keys_alone():
    from models.config import RetrainConfig
    from tasks.benchmark.retraining import method_label, method_settings
    from tasks.hashing import fingerprint

    def key(**kw):
        return fingerprint(method_settings(RetrainConfig(**kw)))

    assert key(method="uniform", rewind=False) == key(method="uniform")  # a uniform run on record is reused
    assert key(method="async-kd", rewind=False) != key(method="async-kd")
    assert method_label(RetrainConfig(method="async-kd", rewind=False)) == "async-kd (no rewind)"
    assert [method_label(RetrainConfig(method=m)) for m in ("async-kd", "gradnorm")] == ["async-kd", "gradnorm"]

"""One learner configuration: every entry point builds the same defaults, reaches every setting and refuses a
bad value with one message naming the field, before any work starts."""

from __future__ import annotations

import inspect
import tomllib
import typing

import pytest
from typer.testing import CliRunner

from models.config import GateConfig, LearnerConfig
from tasks.config import (
    ConfigError,
    flat,
    learner_config,
    parse_overrides,
    preset_names,
    read_preset,
    run_configs,
    to_toml,
)


class Captured(Exception):
    """Raised by the stand-ins below: the entry point got as far as handing its configuration over."""


def _other_value(model: type, path: list[str], default: object) -> object:
    """A valid value that differs from ``default`` for the field at ``path``."""
    for part in path[:-1]:
        model = typing.get_type_hints(model)[part]
    hint = typing.get_type_hints(model)[path[-1]]
    if typing.get_origin(hint) is typing.Literal:
        return next(v for v in typing.get_args(hint) if v != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, str):
        return default + "x: "
    if default is None:
        return 8
    if isinstance(default, int):
        return default + 3
    return default / 2 if default else 0.5


def _everything_changed() -> tuple[list[str], LearnerConfig, GateConfig]:
    """``--set`` items changing every learner and gate setting, and the configurations they must produce."""
    learner_values = {k: _other_value(LearnerConfig, k.split("."), v) for k, v in flat(LearnerConfig()).items()}
    gate_values = {k: _other_value(GateConfig, [k], v) for k, v in flat(GateConfig()).items()}
    items = [f"{k}={v}" for k, v in learner_values.items()] + [f"gate.{k}={v}" for k, v in gate_values.items()]
    learner = LearnerConfig.model_validate(parse_overrides([f"{k}={v}" for k, v in learner_values.items()]))
    return items, learner, GateConfig(**gate_values)


def _sets(items: list[str]) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def test_defaults_live_in_the_model_and_every_field_is_described():
    assert learner_config() == LearnerConfig() == learner_config("default")
    assert LearnerConfig().adapter.learning_rate == 1e-3 and LearnerConfig().fusion.learning_rate == 1e-4
    for model in (LearnerConfig, GateConfig):
        schema = model.model_json_schema()
        for definition in [schema, *schema.get("$defs", {}).values()]:
            for name, prop in definition["properties"].items():
                assert prop.get("description"), f"{definition['title']}.{name} has no description"


def test_every_shipped_preset_is_valid_and_round_trips_through_toml():
    assert {"default", "paper", "demo", "demo-quick", "retrain", "fusion-no-distill", "ad-no-translation"} <= set(
        preset_names())
    for name in preset_names():
        cfg = learner_config(name)
        assert LearnerConfig.model_validate(tomllib.loads(to_toml(cfg))) == cfg
    paper = learner_config("paper")
    assert (paper.adapter.epochs, paper.fusion.epochs, paper.distill.weight) == (5, 5, 1.0)
    assert paper.distill.head_init == "random" and paper.distill.omega == "slice" and not paper.distill.warm_start
    assert (paper.reduction_factor, paper.distill.layer_reduction, paper.pooling) == (16, "sum", "cls")
    assert learner_config("retrain").distill.warm_start
    assert learner_config("fusion-no-distill").distill.weight == 0 and "weight" in read_preset("fusion-no-distill")[
        "distill"]


def test_a_partial_section_keeps_its_other_defaults():
    cfg = LearnerConfig.model_validate({"fusion": {"epochs": 2}})
    assert cfg.fusion.epochs == 2 and cfg.fusion.learning_rate == 1e-4 and cfg.fusion.micro_batch_size == 16


@pytest.mark.parametrize(("item", "field"), [
    ("distill.omega=foo", "distill.omega"),
    ("distill.weight=-1", "distill.weight"),
    ("fusion.epochs=0", "fusion.epochs"),
    ("adapter.epoch=3", "adapter.epoch"),
    ("gate.max_regression=-0.1", "gate.max_regression"),
])
def test_a_bad_value_is_one_message_naming_the_field(item, field):
    with pytest.raises(ConfigError) as err:
        run_configs("arrival", overrides=[item])
    message = str(err.value)
    assert message.startswith("invalid setting ") and field in message and "\n" not in message


def test_set_reaches_every_setting():
    items, learner, gate = _everything_changed()
    assert learner != LearnerConfig() and all(a != b for a, b in zip(flat(learner).values(),
                                                                      flat(LearnerConfig()).values(), strict=True))
    assert run_configs("arrival", overrides=items) == (learner, gate)


# --------------------------------------------------------------------------- entry points
def _arrival_default():
    from flows.arrival import marketplace_arrival

    params = inspect.signature(marketplace_arrival.fn).parameters
    return params["learner"].default, params["gate"].default


def _retrain_default():
    from flows.retrain import scheduled_retraining

    params = inspect.signature(scheduled_retraining.fn).parameters
    return params["learner"].default, params["gate"].default


def test_flows_default_to_the_models_defaults_and_their_presets():
    assert _arrival_default() == (LearnerConfig(), GateConfig())
    learner, gate = _retrain_default()
    assert learner == learner_config("retrain") == LearnerConfig(distill={"warm_start": True})
    assert gate == GateConfig()


def test_arrival_flow_form_describes_every_field():
    from prefect.utilities.callables import parameter_schema

    from flows.arrival import marketplace_arrival
    from flows.retrain import scheduled_retraining

    for flow in (marketplace_arrival, scheduled_retraining):
        schema = parameter_schema(flow).model_dump()
        for definition in [schema, *schema.get("definitions", {}).values()]:
            for name, prop in definition["properties"].items():
                assert prop.get("description"), f"{flow.name}: {definition.get('title')}.{name} has no description"


def test_flows_refuse_a_bad_value_before_any_work(tmp_path, monkeypatch):
    """Prefect validates the parameters against the model before the flow body runs (no data is read)."""
    from prefect.exceptions import ParameterTypeError

    from flows.arrival import marketplace_arrival

    def must_not_run(*args, **kwargs):
        raise AssertionError("the flow body ran with a bad configuration")

    monkeypatch.setattr("tasks.data.load_marketplace", must_not_run)
    missing = str(tmp_path / "missing.parquet")
    with pytest.raises(ParameterTypeError, match=r"learner\.distill\.omega: Input should be .slice., .renorm. or .per-source."):
        marketplace_arrival.validate_parameters({
            "marketplace": "es", "language": "es", "train": missing, "valid": missing, "test": missing,
            "learner": {"distill": {"omega": "foo"}}})
    with pytest.raises(ParameterTypeError, match=r"learner\.fusion\.epochs: Input should be greater than or equal to 1"):
        marketplace_arrival.validate_parameters({
            "marketplace": "es", "language": "es", "train": missing, "valid": missing, "test": missing,
            "learner": {"fusion": {"epochs": 0}}})


def _cli(*args: str):
    from flows.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "250"})


@pytest.fixture()
def captured(monkeypatch, isolated_cache, tiny_encoder):
    """Stand-ins at the point each command hands its configuration to the work; they record it and stop."""
    seen: dict[str, object] = {}
    monkeypatch.setenv("MCL_ENCODER", str(tiny_encoder.path))
    for name in ("MCL_TRACKING_URI", "MCL_ARTIFACT_LOCATION", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)  # the demo points these at its folder; restored afterwards

    def run_arrival(parameters):
        seen["arrive"] = (parameters["learner"], parameters["gate"])
        raise Captured

    def run_sequence(data_root, order, cfg, **kwargs):
        seen["train-sequence"] = cfg
        raise Captured

    def run_benchmark(cfg, data, out, **kwargs):
        seen["benchmark"] = cfg
        raise Captured

    monkeypatch.setattr("flows.commands.arrive.run_arrival", run_arrival)
    monkeypatch.setattr("flows.commands.arrive.check_data", lambda parameters: True)
    monkeypatch.setattr("tasks.learner.run_sequence", run_sequence)
    monkeypatch.setattr("tasks.benchmark.run_benchmark", run_benchmark)
    return seen


@pytest.fixture()
def demo_data(tmp_path_factory):
    from tasks.data import generate_demo

    root = tmp_path_factory.mktemp("config-demo")
    generate_demo(root, languages=("en", "es"), pairs_per_marketplace=120, seed=3)
    return root


def _command(name: str, demo_data, out) -> list[str]:
    files = ["--train", str(demo_data / "es" / "train.parquet"), "--valid", str(demo_data / "es" / "valid.parquet"),
             "--test", str(demo_data / "es" / "test.parquet")]
    return {
        "arrive": ["arrive", "--marketplace", "es", "--language", "es", *files],
        "train-sequence": ["train-sequence", "--data", str(demo_data), "--order", "en,es"],
        "benchmark": ["benchmark", "--data", str(demo_data), "--order", "en,es", "--out", str(out), "--no-mlflow"],
        "demo": ["demo", "--out", str(out), "--languages", "en,es"],
    }[name]


def _learner_of(name: str, seen: dict) -> LearnerConfig:
    value = seen["benchmark"].learner if name == "benchmark" else seen[name]
    return value[0] if isinstance(value, tuple) else value


def _expected_default(name: str) -> LearnerConfig:
    """What each command starts from: the model's defaults, or the preset it names for its job."""
    if name == "benchmark":
        return LearnerConfig.model_validate(read_preset("cpu", "benchmark")["learner"])
    return learner_config({"demo": "demo"}.get(name, "default"))


@pytest.mark.parametrize("name", ["arrive", "train-sequence", "benchmark", "demo"])
def test_every_command_builds_its_default_reaches_every_setting_and_refuses_bad_values(
        name, captured, demo_data, tmp_path):
    seen = captured
    if name == "demo":  # the demo hands each arrival to run_arrival, which it imports from the arrive command
        seen["demo"] = None
    with pytest.raises(Captured):
        _cli(*_command(name, demo_data, tmp_path / "out"))
    key = "arrive" if name == "demo" else name
    assert _learner_of(key, seen) == _expected_default(name)

    items, learner, gate = _everything_changed()
    if name == "benchmark":
        items = [i for i in items if not i.startswith("gate.")]  # the benchmark registers nothing
    with pytest.raises(Captured):
        _cli(*_command(name, demo_data, tmp_path / "out2"), *_sets(items))
    assert _learner_of(key, seen) == learner
    if key == "arrive":
        assert seen["arrive"][1] == gate

    for item, field in (("distill.omega=foo", "distill.omega"), ("distill.weight=-1", "distill.weight"),
                        ("fusion.epochs=0", "fusion.epochs")):
        seen.clear()
        result = _cli(*_command(name, demo_data, tmp_path / "out3"), "--set", item)
        assert result.exit_code == 2 and field in result.output and "invalid setting" in result.output
        assert not seen, "work started with a bad configuration"


def test_mcl_config_show_prints_the_configuration_it_would_use():
    result = _cli("config", "show", "--preset", "paper", "--set", "fusion.epochs=3")
    assert result.exit_code == 0
    text = result.output
    assert "# λ, the weight of L_AD" in text and 'head_init = "random"' in text
    shown = tomllib.loads(text)
    gate = shown.pop("gate")
    assert LearnerConfig.model_validate(shown) == learner_config("paper", overrides=["fusion.epochs=3"])
    assert GateConfig.model_validate(gate) == GateConfig()


def test_retraining_fallback_keeps_every_option(monkeypatch, tmp_path, demo_data):
    """A one-marketplace champion is retrained as a replacing arrival with exactly the settings it was given."""
    from flows import retrain
    from tasks import registry
    from tasks.landing import Landing

    _, learner, gate = _everything_changed()
    champion = registry.VersionInfo(version="1", run_id="r", source="s", marketplaces=["en"], languages=["en"],
                                    aucs={}, test_sets={}, data_hashes={}, parent=None)
    import mlflow

    train, valid, test = (str(demo_data / "en" / f"{split}.parquet") for split in ("train", "valid", "test"))
    landing = Landing("en", "en", train, valid, test, marker="m1")
    calls = []
    monkeypatch.setattr("flows.candidate.start_tracking",
                        lambda settings: mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db"))
    monkeypatch.setattr(registry, "alias_version", lambda client, alias: champion)
    monkeypatch.setattr(retrain, "scan_landing_zone", lambda root, **kw: [landing])
    monkeypatch.setattr(retrain, "marketplace_arrival", lambda **kwargs: calls.append(kwargs) or {"version": "2"})
    monkeypatch.setenv("MCL_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert retrain.scheduled_retraining.fn(str(tmp_path), learner=learner, gate=gate, encoder="enc") == {"version": "2"}
    (call,) = calls
    assert call["learner"] == learner and call["gate"] == gate and call["replace"] is True
    assert call["encoder"] == "enc" and call["marketplace"] == "en" and call["train"] == train

"""Shared fixtures: tiny encoders and small synthetic marketplaces, built in milliseconds."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Three "languages" over one meaning space: a query names a product type and a colour; a title is
# relevant when it names the same type. Enough structure for a tiny model to learn a little.
WORDS = {
    "en": (["red", "blue", "green"], ["shoe", "phone", "lamp", "cup", "bag", "watch"]),
    "es": (["rojo", "azul", "verde"], ["zapato", "telefono", "lampara", "taza", "bolso", "reloj"]),
    "fr": (["rouge", "bleu", "vert"], ["chaussure", "telephone", "lampe", "tasse", "sac", "montre"]),
}


def make_pairs(lang: str, n: int, seed: int, source: str = "task"):
    from models.pairs import Pairs

    rng = random.Random(f"{lang}-{seed}")
    colours, types = WORDS[lang]
    queries, titles, labels = [], [], []
    for i in range(n):
        a = rng.randrange(len(types))
        relevant = i % 2 == 0
        b = a if relevant else (a + rng.randrange(1, len(types))) % len(types)
        queries.append(f"{rng.choice(colours)} {types[a]}")
        titles.append(f"{types[b]} {rng.choice(colours)} deluxe")
        labels.append(int(relevant))
    return Pairs(queries, titles, labels, source=source)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    from models.encoders import EncoderRef
    from models.tiny import build_tiny_encoder

    texts = [w for colours, types in WORDS.values() for w in colours + types]
    path = build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"), texts, hidden_size=32, num_layers=2)
    return EncoderRef(name="tiny-test", path=Path(path), checksum="tiny-checksum-1")


@pytest.fixture()
def marketplaces():
    from models.methods import MarketplaceSplits
    from models.relevance import MarketplaceSpec

    return [
        MarketplaceSplits(MarketplaceSpec(lang, lang), make_pairs(lang, 96, 1), make_pairs(lang, 32, 2),
                          make_pairs(lang, 32, 3))
        for lang in ("en", "es", "fr")
    ]


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch):
    """A CLI test's own cache dir (settings re-read), and MLflow's tracking URI reset afterwards."""
    from tasks.settings import get_settings

    monkeypatch.setenv("MCL_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
    import mlflow

    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One temporary Prefect server for every flow test of the session (starting one takes seconds), keeping its
    leases on disk as the CLI's local servers do (``flows.commands.local_prefect``)."""
    from prefect.settings import (
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    from tasks.registry_lock import LEASES_ON_DISK

    with temporary_settings({PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE: LEASES_ON_DISK}), \
            prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("prefect-results")}):
            yield


@pytest.fixture()
def local_command_env(tmp_path) -> dict[str, str]:
    """The environment of a local `mcl` command run as a process of its own: no Prefect setting from this session
    (so no configured server: it starts a temporary one), a Prefect home of this test's own, the repo importable."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return env


@pytest.fixture()
def mcl(tmp_path, monkeypatch, prefect_server):
    """Fresh cache, tracking store and artifact root per flow test; MLflow pointed back at its default after."""
    import mlflow

    from tasks.settings import get_settings

    monkeypatch.setenv("MCL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MCL_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MCL_ARTIFACT_LOCATION", str(tmp_path / "artifacts"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
    mlflow.set_tracking_uri(None)

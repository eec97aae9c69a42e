"""Apertium: rule-based pairs from Debian packages, the backend that works on a machine with no models.

A whole chunk of sentences goes through ONE ``apertium`` process. Sentences are separated by a
blank line: Apertium's text deformatter treats a blank line as a sentence end, so transfer rules
never move words from one sentence into the next (a single newline is only whitespace to it, and
``la casa\\nroja`` comes back as ``The red\\nhouse``). The output is split on blank lines again and
its length checked; a chunk that does not come back aligned is bisected, never guessed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from tasks.translation.backends.base import BatchTranslation, ModelInfo, Pair, TranslationBackend
from tasks.translation.errors import ModelUnavailableError, TranslationError
from tasks.translation.languages import normalize_language

DEFAULT_DATA_DIR = Path("/usr/share/apertium")
_MODE_NAME = re.compile(r"^([a-z]{2,3})-([a-z]{2,3})(?:_[A-Za-z0-9_]+)?$")
_QUOTED_PATH = re.compile(r"'(/[^']+)'")


def mode_pair(mode: str) -> Pair | None:
    """``spa-eng`` -> es-en, ``spa-eng_US`` -> es-en (a variant); ``eco-fr-es`` and other modes -> None."""
    match = _MODE_NAME.match(mode)
    return None if match is None else Pair.from_codes(match.group(1), match.group(2))


class ApertiumBackend(TranslationBackend):
    """Translation through the ``apertium`` command and the pairs installed for it."""

    name = "apertium"
    chunk_size = 2000

    def __init__(self, *, executable: str = "apertium", data_dir: Path | None = None, timeout_s: float = 600.0) -> None:
        self.executable = executable
        env_dir = os.environ.get("APERTIUM_DATADIR")
        self.data_dir = Path(data_dir) if data_dir else Path(env_dir) if env_dir else DEFAULT_DATA_DIR
        self.timeout_s = timeout_s

    @property
    def installed(self) -> bool:
        return shutil.which(self.executable) is not None

    def _base_command(self) -> list[str]:
        return [self.executable, "-d", str(self.data_dir)]

    @cached_property
    def modes(self) -> dict[Pair, str]:
        """Installed modes by pair, as ``apertium -l`` lists them; a plain ``src-tgt`` mode wins over variants."""
        if not self.installed:
            return {}
        listed = subprocess.run([*self._base_command(), "-l"], capture_output=True, text=True, check=False)
        names = sorted(line.strip() for line in listed.stdout.splitlines() if line.strip())
        modes: dict[Pair, str] = {}
        for mode in sorted(names, key=lambda m: ("_" in m, m)):
            pair = mode_pair(mode)
            if pair is not None and pair.source != pair.target:
                modes.setdefault(pair, mode)
        return modes

    def pairs(self) -> frozenset[Pair]:
        return frozenset(self.modes)

    def prepare(self, pair: Pair) -> ModelInfo:
        mode = self.modes.get(pair)
        if mode is None:
            raise ModelUnavailableError(f"apertium has no {pair} mode in {self.data_dir}/modes")
        return ModelInfo(self.name, f"apertium {mode}", self._mode_version(mode))

    def _mode_version(self, mode: str) -> str:
        """The mode file and every data file it names, by size and time: a package upgrade changes it."""
        mode_file = self.data_dir / "modes" / f"{mode}.mode"
        text = mode_file.read_text(encoding="utf-8")
        digest = hashlib.sha256(text.encode())
        for path in sorted(set(_QUOTED_PATH.findall(text))):
            p = Path(path)
            if p.is_file():
                stat = p.stat()
                digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    def translate(self, texts: Sequence[str], pair: Pair) -> BatchTranslation:
        mode = self.modes[pair]
        translated = self._translate_aligned(list(texts), mode)
        return BatchTranslation([_match_case(src, out) for src, out in zip(texts, translated)], [False] * len(texts))

    def _translate_aligned(self, texts: list[str], mode: str) -> list[str]:
        if not texts:
            return []
        outputs = self._run(texts, mode)
        if len(outputs) == len(texts):
            return outputs
        if len(texts) == 1:
            return [" ".join(outputs).strip()]
        half = len(texts) // 2
        return self._translate_aligned(texts[:half], mode) + self._translate_aligned(texts[half:], mode)

    def _run(self, texts: list[str], mode: str) -> list[str]:
        payload = "\n\n".join(" ".join(t.split()) for t in texts) + "\n"
        done = subprocess.run(
            [*self._base_command(), "-u", "-f", "txt", mode],
            input=payload.encode("utf-8"), capture_output=True, timeout=self.timeout_s, check=False,
        )
        if done.returncode != 0:
            raise TranslationError(f"apertium {mode} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
        out = done.stdout.decode("utf-8", errors="replace")
        if out.endswith("\n"):
            out = out[:-1]
        return [part.strip() for part in out.split("\n\n")]

    def install_hints(self, pair: Pair) -> list[str]:
        packages = debian_packages_for(pair)
        return [f"apt-get install {name}" for name in packages] or [f"(no Debian apertium package covers {pair})"]


def _match_case(source: str, translation: str) -> str:
    """Apertium capitalises the start of every sentence; lowercase queries should stay lowercase."""
    return translation.lower() if not any(ch.isupper() for ch in source) else translation


def debian_packages_for(pair: Pair) -> list[str]:
    """Debian packages named ``apertium-X-Y`` whose two languages are the pair's (in either order)."""
    if shutil.which("apt-cache") is None:
        return []
    listed = subprocess.run(["apt-cache", "pkgnames", "apertium-"], capture_output=True, text=True, check=False)
    wanted = {pair.source, pair.target}
    found = []
    for name in sorted(listed.stdout.split()):
        parts = name.split("-")
        if len(parts) != 3:
            continue
        try:
            langs = {normalize_language(parts[1]), normalize_language(parts[2])}
        except ValueError:
            continue
        if langs == wanted:
            found.append(name)
    return found

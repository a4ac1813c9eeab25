"""SQLFluff adapter: the only module that imports sqlfluff.

Config discovery is never used: the config is built from sqlfluff's defaults
plus our overrides, so an uploaded ``.sqlfluff``/``setup.cfg``/``pyproject.toml``
cannot change rules or make the jinja templater import uploaded Python.
"""

from __future__ import annotations

import codecs
import functools
import gc
import importlib.metadata
import importlib.util
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlcheck.errors import FileRejected, UserInputError
from sqlcheck.states import FailureReason

log = logging.getLogger(__name__)

SQLFLUFF_VERSION = importlib.metadata.version("sqlfluff")

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


@dataclass(frozen=True)
class LintReport:
    """What linting one file found, in builtin types only (no sqlfluff objects leak out)."""

    violations: list[dict[str, Any]]
    parse_errors: int
    duration_s: float


def decode_sql(data: bytes) -> tuple[str, str]:
    """Decode uploaded bytes: BOM first, then UTF-8, then GB18030, then detection.

    Returns (text, encoding). Raises FileRejected(decode_error) for binary content.
    """
    text, encoding = None, None
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                text, encoding = data.decode(codec), codec
            except UnicodeDecodeError:
                pass
            break
    if text is None:
        for codec in ("utf-8", "gb18030"):
            try:
                text, encoding = data.decode(codec), codec
                break
            except UnicodeDecodeError:
                continue
    if text is None:
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
        if best is not None:
            text, encoding = str(best), best.encoding
    if text is None or "\x00" in text:
        raise FileRejected(FailureReason.DECODE_ERROR, "file is not text in any supported encoding (binary content?)")
    return text, encoding


def rust_parser_available() -> bool:
    """True when sqlfluffrs (the `sqlfluff[rs]` extra) is installed."""
    return importlib.util.find_spec("sqlfluffrs") is not None


@functools.lru_cache(maxsize=2)
def parser_kind(rust_parser: bool) -> str:
    """Which parser really runs, with its version: part of the result cache key (asked per file;
    reading the package metadata cost ~0.5 ms each time)."""
    if rust_parser and rust_parser_available():
        return f"rust-{importlib.metadata.version('sqlfluffrs')}"
    return "python"


def _config_overrides(
    dialect: str, options: tuple[tuple[str, Any], ...], rust_parser: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Core overrides and nested configs; an option key `a:b:key` sets `[sqlfluff:a:b] key`."""
    overrides: dict[str, Any] = {
        "dialect": dialect,
        # Our own SQLCHECK_MAX_FILE_BYTES decides what is too large, and says so.
        "large_file_skip_byte_limit": 0,
        # SQLCHECK_RUST_PARSER; sqlfluff falls back to its Python parser when sqlfluffrs is missing
        "use_rust_parser": "auto" if rust_parser else False,
    }
    configs: dict[str, Any] = {}
    for key, value in options:
        *sections, name = key.split(":")
        node = configs
        for section in sections:
            node = node.setdefault(section, {})
        (node if sections else overrides)[name] = value
    return overrides, configs


@dataclass(frozen=True)
class WarmLinter:
    """A sqlfluff Linter and its rules, built once from one configuration.

    Linter.lint_string builds the rules again for every file (~0.8 ms, ~8% of a small file's
    lint) and deep-copies the configuration (~0.5 ms) in case the file changes it with an
    inline `-- sqlfluff:` line, all from the same configuration. Here both are reused, except
    for a file that mentions sqlfluff, which gets lint_string itself. The attributes rules set
    on themselves while linting are reset on each call (ST06) or derived from the
    configuration and dialect (CP01, CV09, RF02-RF05), which a shared rule pack only ever sees
    one of; the fidelity tests and bin/bench check that the violations stay those of
    `sqlfluff lint`.
    """

    linter: Any
    rules: Any

    def lint(self, text: str, fname: str):
        """What Linter.lint_string does, with the rules and the configuration built once."""
        linter = self.linter
        if "sqlfluff" in text:  # may hold inline config (even another dialect): sqlfluff's own path
            return linter.lint_string(text, fname=fname)
        parsed = linter.parse_rendered(linter.render_string(text, fname, linter.config, "utf-8"))
        return linter.lint_parsed(parsed, self.rules, fix=False, formatter=linter.formatter, encoding="utf8")


def get_linter(dialect: str, options: tuple[tuple[str, Any], ...] = (), rust_parser: bool = True) -> WarmLinter:
    """One warm Linter per (dialect, options, parser) per process: building one costs ~10% of a small lint.

    The arguments are passed on in one form: lru_cache keys by the arguments as written, so
    get_linter(d) and get_linter(d, (), True) would otherwise build two Linters.
    """
    return _build_linter(dialect, tuple(options), bool(rust_parser))


@functools.lru_cache(maxsize=16)
def _build_linter(dialect: str, options: tuple[tuple[str, Any], ...], rust_parser: bool) -> WarmLinter:
    """Build and warm one Linter (through get_linter, which keys the cache).

    Once built and warmed, everything alive is frozen out of the cyclic garbage collector
    (gc.freeze): the grammar and rule objects live as long as the process, and full
    collections that walked them every few files cost ~20% of lint time (bin/bench, (c)).
    Reference counting still frees frozen objects; only cycles among them would stay.
    """
    from sqlfluff.core import FluffConfig, Linter
    from sqlfluff.core.errors import SQLFluffUserError
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # sqlfluff's progress bars would start a thread; warm processes fork children

    try:
        overrides, configs = _config_overrides(dialect, options, rust_parser)
        config = FluffConfig(configs=configs or None, overrides=overrides)
    except SQLFluffUserError as exc:
        raise UserInputError(f"invalid lint configuration: {exc}") from None
    except KeyError:  # sqlfluff's dialect lookup raises a bare KeyError for unknown names
        raise UserInputError(f"unknown SQL dialect {dialect!r}") from None
    started = time.perf_counter()
    linter = Linter(config=config)
    warm = WarmLinter(linter, linter.get_rulepack())
    warm.lint("SELECT 1\n", fname="warmup.sql")  # loads the dialect's grammar
    gc.collect()
    gc.freeze()
    log.info("linter for dialect %s built and warmed in %.2fs", dialect, time.perf_counter() - started)
    return warm


def check_dialect(dialect: str, rust_parser: bool = True) -> None:
    """Raise UserInputError unless sqlfluff knows this dialect, by building (once) the warm Linter
    its files are linted with: checking a job's dialect and warming a worker are the same act."""
    get_linter(dialect, rust_parser=rust_parser)


def lint_sql(
    text: str, member_path: str, dialect: str, options: tuple[tuple[str, Any], ...] = (), rust_parser: bool = True
) -> LintReport:
    """Lint one file's text; the violations are exactly what `sqlfluff lint --format json` lists."""
    linter = get_linter(dialect, options, rust_parser)
    started = time.perf_counter()
    linted = linter.lint(text, fname=member_path)
    violations = sorted(
        (v.to_dict() for v in linted.get_violations(filter_warning=False)),
        key=lambda v: (v["start_line_no"], v["start_line_pos"], v["code"]),
    )
    # Freeing sqlfluff's parse tree (~0.4 ms a file) is part of linting, so it is timed here, not
    # left to fall on whatever the caller does next (per-file overhead in bin/bench).
    del linted
    parse_errors = sum(1 for v in violations if v["code"] in ("PRS", "LXR", "TMP"))
    return LintReport(violations, parse_errors, time.perf_counter() - started)

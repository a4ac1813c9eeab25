"""Per-job lint configuration: what a job may choose, and what an uploaded `.sqlfluff` may set.

Only a whitelist of harmless options is ever taken: rule selection, line length,
indentation and capitalisation policies. Templater settings, library paths,
plugins and anything else that could make sqlfluff load code are never taken.
An uploaded `.sqlfluff` is parsed here with configparser, as data; it never
reaches sqlfluff's own config loader. What was ignored is recorded for the summary.

Precedence: the job's own options, then the uploaded root `.sqlfluff`, then
sqlfluff's defaults (lint_engine never discovers config files).
"""

from __future__ import annotations

import configparser
import functools
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlcheck.archive import CORRUPT_DATA, decode_member_name, member_chunks
from sqlcheck.errors import UserInputError
from sqlcheck.share import SharePaths, atomic_write

#: files that configure sqlfluff in a project; only a root `.sqlfluff` is ever read
CONFIG_FILE_NAMES = (".sqlfluff", "setup.cfg", "tox.ini", "pyproject.toml")
ROOT_CONFIG = ".sqlfluff"
MAX_CONFIG_BYTES = 64 * 1024

_CODES = re.compile(r"^[A-Za-z0-9_.]+$")
_CAPITALISATION = ("consistent", "upper", "lower", "capitalise")
_EXTENDED_CAPITALISATION = _CAPITALISATION + ("pascal", "snake", "camel")


@dataclass(frozen=True)
class Option:
    """One whitelisted option: its sqlfluff key path (`section:...:key`) and how to check a value."""

    sqlfluff_key: str
    kind: str  # "codes", "int" or "choice"
    choices: tuple[str, ...] = ()


#: job option name -> what it sets in sqlfluff. Nothing here can load code.
OPTIONS: dict[str, Option] = {
    "rules": Option("rules", "codes"),
    "exclude_rules": Option("exclude_rules", "codes"),
    "max_line_length": Option("max_line_length", "int"),
    "tab_space_size": Option("indentation:tab_space_size", "int"),
    "indent_unit": Option("indentation:indent_unit", "choice", ("space", "tab")),
    "keywords_capitalisation_policy": Option(
        "rules:capitalisation.keywords:capitalisation_policy", "choice", _CAPITALISATION),
    "identifiers_capitalisation_policy": Option(
        "rules:capitalisation.identifiers:extended_capitalisation_policy", "choice", _EXTENDED_CAPITALISATION),
    "functions_capitalisation_policy": Option(
        "rules:capitalisation.functions:extended_capitalisation_policy", "choice", _EXTENDED_CAPITALISATION),
    "literals_capitalisation_policy": Option(
        "rules:capitalisation.literals:capitalisation_policy", "choice", _CAPITALISATION),
    "types_capitalisation_policy": Option(
        "rules:capitalisation.types:extended_capitalisation_policy", "choice", _EXTENDED_CAPITALISATION),
}

#: (`.sqlfluff` section, key) -> job option name; `dialect` is handled apart (a job column)
_UPLOAD_KEYS: dict[tuple[str, str], str] = {
    ("sqlfluff:" + o.sqlfluff_key.rsplit(":", 1)[0] if ":" in o.sqlfluff_key else "sqlfluff",
     o.sqlfluff_key.rsplit(":", 1)[-1]): name
    for name, o in OPTIONS.items()
}


def check_value(name: str, value: Any) -> Any:
    """The value in the form sqlfluff takes, or UserInputError naming the option."""
    option = OPTIONS.get(name)
    if option is None:
        raise UserInputError(f"job option {name!r} is not allowed; allowed: {', '.join(OPTIONS)}")
    if option.kind == "codes":
        items = value if isinstance(value, list) else value.split(",") if isinstance(value, str) else [value]
        codes = [c.strip() for c in items if isinstance(c, str) and c.strip()]  # not str(c): null is not "None"
        if not codes or not all(isinstance(c, str) for c in items) or not all(_CODES.match(c) for c in codes):
            raise UserInputError(f"job option {name!r}: expected rule codes like LT01,CP01, got {value!r}")
        return ",".join(codes)
    if option.kind == "int":
        try:
            number = int(str(value).strip())
        except ValueError:
            raise UserInputError(f"job option {name!r}: expected a whole number, got {value!r}") from None
        if not 0 <= number <= 10_000:
            raise UserInputError(f"job option {name!r}: {number} is out of range 0-10000")
        return number
    text = str(value).strip().lower()
    if text not in option.choices:
        raise UserInputError(f"job option {name!r}: expected one of {', '.join(option.choices)}, got {value!r}")
    return text


def parse_job_options(raw: str | None) -> dict[str, Any]:
    """The job row's `options` JSON, checked against the whitelist. Raises UserInputError."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser's stack
        raise UserInputError("job options are not valid JSON") from None
    if not isinstance(data, dict):
        raise UserInputError("job options must be a JSON object")
    return {name: check_value(name, value) for name, value in sorted(data.items())}


def options_from_pairs(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (as typed on the command line) as checked job options."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise UserInputError(f"option {pair!r}: expected KEY=VALUE, e.g. max_line_length=120")
        options[name.strip()] = check_value(name.strip(), value)
    return options


@dataclass
class UploadedConfig:
    """What the uploaded configuration files contributed, and what was refused."""

    dialect: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    ignored: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"dialect": self.dialect, "options": self.options, "ignored": self.ignored}


def parse_uploaded_sqlfluff(text: str, source: str = ROOT_CONFIG) -> UploadedConfig:
    """Take only whitelisted keys from a `.sqlfluff` text; everything else is listed as ignored."""
    result = UploadedConfig()
    parser = configparser.ConfigParser(interpolation=None, strict=False, empty_lines_in_values=False)
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        result.ignored.append({"file": source, "key": "*", "reason": f"not a valid config file: {exc.__class__.__name__}"})
        return result
    for section in parser.sections():
        for key, value in parser.items(section, raw=True):
            where = f"[{section}] {key}"
            if not section.startswith("sqlfluff"):
                result.ignored.append({"file": source, "key": where, "reason": "not a sqlfluff section"})
            elif section == "sqlfluff" and key == "dialect":
                result.dialect = value.strip().lower() or None
            elif (section, key) in _UPLOAD_KEYS:
                name = _UPLOAD_KEYS[(section, key)]
                try:
                    result.options[name] = check_value(name, value)
                except UserInputError as exc:
                    result.ignored.append({"file": source, "key": where, "reason": str(exc)})
            else:
                result.ignored.append({"file": source, "key": where, "reason": "not on the whitelist (never taken from uploads)"})
    return result


def read_uploaded_config(zip_path: Path, member_names: list[str]) -> UploadedConfig:
    """Read the ZIP's root `.sqlfluff` (if any, at most 64 KiB); note every other config file as ignored."""
    result = UploadedConfig()
    root = None
    for name in member_names:
        base = name.replace("\\", "/").rsplit("/", 1)[-1]
        if base not in CONFIG_FILE_NAMES:
            continue
        if name.replace("\\", "/").removeprefix("./") == ROOT_CONFIG and root is None:
            root = name
        else:
            result.ignored.append({"file": name, "key": "*", "reason": "only a .sqlfluff at the ZIP root is read"})
    if root is None:
        return result
    try:
        with zipfile.ZipFile(zip_path) as zf:
            data = b""
            for chunk in member_chunks(zf, _info_named(zf, root), MAX_CONFIG_BYTES):
                data += chunk
                if len(data) > MAX_CONFIG_BYTES:
                    break
    except (*CORRUPT_DATA, OSError, NotImplementedError, RuntimeError, KeyError, ValueError) as exc:
        result.ignored.append({"file": root, "key": "*", "reason": f"unreadable: {exc.__class__.__name__}"})
        return result
    if len(data) > MAX_CONFIG_BYTES:
        result.ignored.append({"file": root, "key": "*", "reason": f"larger than {MAX_CONFIG_BYTES} bytes"})
        return result
    parsed = parse_uploaded_sqlfluff(data.decode("utf-8", errors="replace"), root)
    parsed.ignored = result.ignored + parsed.ignored
    return parsed


def _info_named(zf: zipfile.ZipFile, decoded_name: str) -> zipfile.ZipInfo:
    for info in zf.infolist():
        if decode_member_name(info) == decoded_name:
            return info
    raise KeyError(decoded_name)


# ---- storage on the share: written once at expansion, read by every lint ---------------


def _config_path(share: SharePaths, job_id: str) -> Path:
    return share.job_dir(job_id) / "uploaded_config.json"


def save_uploaded(share: SharePaths, job_id: str, cfg: UploadedConfig) -> None:
    """Durable before the task rows commit (file and name): lost in a crash, it would read as "no
    configuration" and the files would be linted with the defaults, with nothing to tell."""
    atomic_write(_config_path(share, job_id), json.dumps(cfg.as_json(), sort_keys=True).encode(), fsync=True)


@functools.lru_cache(maxsize=64)
def _load_cached(path: Path) -> tuple[str | None, tuple[tuple[str, Any], ...], tuple[tuple[str, str], ...]]:
    data = json.loads(path.read_text("utf-8"))
    ignored = tuple(tuple(sorted(i.items())) for i in data.get("ignored", []))
    return data.get("dialect"), tuple(sorted(data.get("options", {}).items())), ignored


def load_uploaded(share: SharePaths, job_id: str) -> UploadedConfig:
    """The stored upload contribution; an empty one when the job had no config file. Any other
    error reading it is raised: a share that failed for a moment (ESTALE, EIO) must be retried,
    not have the file linted with the default configuration."""
    try:
        dialect, options, ignored = _load_cached(_config_path(share, job_id))
    except (FileNotFoundError, ValueError):
        return UploadedConfig()
    return UploadedConfig(dialect, dict(options), [dict(i) for i in ignored])


# ---- the effective configuration ------------------------------------------------------


def effective_dialect(job_dialect: str | None, uploaded: UploadedConfig, default: str) -> str:
    return job_dialect or uploaded.dialect or default


def effective_options(job_options: dict[str, Any], uploaded: UploadedConfig) -> dict[str, Any]:
    """Job options win over the uploaded `.sqlfluff`."""
    return {**uploaded.options, **job_options}


def sqlfluff_options(options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Hashable (sqlfluff key path, value) pairs: the Linter cache key and its configuration."""
    return tuple(sorted((OPTIONS[name].sqlfluff_key, value) for name, value in options.items()))


def summary_part(job_dialect: str | None, job_options_raw: str | None, uploaded: UploadedConfig, default: str) -> dict:
    """The `configuration` entry of summary.json: what was used and what was ignored."""
    try:
        job_options = parse_job_options(job_options_raw)
    except UserInputError:
        job_options = {}
    return {
        "dialect": effective_dialect(job_dialect, uploaded, default),
        "options": effective_options(job_options, uploaded),
        "from_upload": uploaded.options | ({"dialect": uploaded.dialect} if uploaded.dialect else {}),
        "ignored": uploaded.ignored,
    }

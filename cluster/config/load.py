"""Loading a config: a YAML file (or a shipped config's name), then `section.key=value` overrides, checked key
by key against the schema (an unknown key names the nearest known one; a wrong type names the key), then
validated. Every error is one line."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path

import yaml

from cluster.config.errors import ConfigError
from cluster.config.schema import RunConfig, motivation_mode


def _coerce(value, annotation, where: str):
    """Check `value` against a dataclass field annotation (str, int, float, bool, lists, Optional)."""
    hint = typing.get_origin(annotation)
    if hint in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if hint is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        if dataclasses.is_dataclass(item):
            return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        # YAML 1.1 reads "2e-5" (no dot) as a string.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"; did you mean {close[0]}?" if close else f" (known: {', '.join(sorted(known))})"
        raise ConfigError(f"unknown config key {where + '.' if where else ''}{unknown[0]}{hint}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise ConfigError(f"{where}: missing key {missing[0]}")
    kwargs = {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], value, key)
        else:
            kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def apply_override(raw: dict, override: str) -> None:
    """Apply one `a.b.c=value` override (value parsed as YAML) to the raw config mapping."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value")
    key, text = override.split("=", 1)
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    try:
        node[leaf] = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem", None) or "not YAML"
        raise ConfigError(f"override {override!r}: its value is not valid YAML ({where}); quote it, e.g. "
                          f"{key}='...'") from None


# --- `--config NAME`: the configs shipped inside the package, found from any directory ---
CONFIGS = Path(__file__).parents[1] / "configs"


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def resolve_config(path: str | Path) -> Path:
    """A config file that exists wins; else a bare name (`demo`, `demo.yaml`) is a shipped config,
    cluster/configs/<name>.yaml; anything else is a ConfigError naming the shipped configs."""
    given = Path(path)
    if given.is_file():
        return given
    shipped = ", ".join(shipped_configs()) or "none"
    if len(given.parts) == 1 and given.name not in ("", ".", ".."):
        name = given.name.removesuffix(".yaml").removesuffix(".yml")
        if (CONFIGS / f"{name}.yaml").is_file():
            return CONFIGS / f"{name}.yaml"
        raise ConfigError(f"no config file {str(path)!r} and no shipped config named {name!r} (shipped: {shipped})")
    raise ConfigError(f"config file not found: {path} (shipped configs, by name: {shipped})")
# --- end `--config NAME` ---


def load_config(path: str | Path | None, overrides: list[str] = (), kind: type = RunConfig, purpose: str = "train"):
    """A validated `kind` (RunConfig, SFTRunConfig) from a YAML file (or a shipped config's name) and
    `a.b=value` overrides. purpose="eval" (`motif eval`) applies only the rules that evaluation needs."""
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(resolve_config(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            # One line, not the parser's picture of the text; its marks count from 0.
            mark = getattr(e, "problem_mark", None)
            if mark is None:
                detail = " ".join(str(e).split())
            else:
                detail = f"line {mark.line + 1}, column {mark.column + 1}: {e.problem}"
                if e.context and e.context_mark:
                    detail += f" ({e.context} from line {e.context_mark.line + 1})"
            raise ConfigError(f"config file {path} is not valid YAML: {detail}") from None
    for override in overrides:
        apply_override(raw, override)
    config = _build(kind, raw, "")
    if purpose == "eval":
        config.validate(training=False)
    else:
        config.validate()
    return config


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def without_new_unset(saved, current, defaults=None):
    """`current` without the keys that `saved` lacks while they are unset (None) in `current`, or, given the
    schema's `defaults` (a config dict of defaults), at their default, at every depth: settings written before
    an optional field existed compare equal to the same settings now. (A new field's default keeps what runs
    did before it, or it would not be the default.)"""
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        return [without_new_unset(was, now) for was, now in zip(saved, current)]  # e.g. the reward terms
    if not (isinstance(saved, dict) and isinstance(current, dict)):
        return current
    defaults = defaults if isinstance(defaults, dict) else {}
    return {k: without_new_unset(saved.get(k), v, defaults.get(k)) for k, v in current.items()
            if k in saved or not (v is None or (k in defaults and v == defaults[k]))}


# Values an older version wrote that read differently now, by dotted key.
WRITTEN_BEFORE = {"reward.motivation": motivation_mode}  # true/false before its modes


def read_as_now(settings, where: str = ""):
    """`settings` (a config as a dict, or resume fields by dotted name) with the values an older version wrote
    read as they are now (WRITTEN_BEFORE), at every depth: a run recorded with `motivation: true` compares equal
    to the same run configured `consistent`."""
    if isinstance(settings, dict):
        return {k: read_as_now(v, f"{where}.{k}" if where else k) for k, v in settings.items()}
    return WRITTEN_BEFORE[where](settings) if where in WRITTEN_BEFORE else settings

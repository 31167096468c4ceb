"""Every exception tierflow defines survives pickling with its message and its fields: Prefect pickles a failed
task's exception to send it back from a Dask worker or a process pool, and to persist it as the task's result."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tierflow.report.run_report import RunSummary

REPO = Path(__file__).resolve().parents[1]
SAMPLES: dict[str, Any] = {
    "str": "a {name}",
    "str | None": "a {name}",
    "int": 7,
    "float": 1.5,
    "bool": True,
    "list[str]": ["a {name}"],
    "Mapping[str, str] | None": {"\x07": "an essay.[U+0007]Well"},
    "RunSummary": RunSummary("run-1", "reading-notes", failed="collate failed: the provider is down"),
}
"""A value for each parameter annotation an exception's `__init__` takes (`{name}`: the parameter's)."""


def modules() -> list[str]:
    """Every module of every package the distribution installs (pyproject's `packages`, where `tierflow.flows` and
    `tierflow.tasks` live outside tierflow/), but a `__main__`, which runs the CLI when imported."""
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = []
    for package in packages:
        found.append(package)
        path = importlib.import_module(package).__path__
        found += [f"{package}.{m.name}" for m in pkgutil.iter_modules(path) if not m.ispkg and m.name != "__main__"]
    return sorted(set(found))


def exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in modules():
        for obj in vars(importlib.import_module(name)).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__.startswith("tierflow."):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def sample(name: str, annotation: Any, default: Any) -> Any:
    key = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    if key == "bool" and isinstance(default, bool):
        return not default  # a field left at its default would prove nothing
    assert key in SAMPLES, f"no sample value for {name}: {key}; add one to SAMPLES"
    value = SAMPLES[key]
    if isinstance(value, str):
        return value.format(name=name)
    return [v.format(name=name) for v in value] if isinstance(value, list) else value


def instance(cls: type[BaseException]) -> BaseException:
    """`cls` built with a value for every parameter of its own `__init__` (defaults too), or one message; and every
    plain field its classes declare (`retryable`, `phase`...) set on the instance to a value other than its
    default."""
    own = next((c for c in cls.__mro__ if "__init__" in vars(c) and c.__module__.startswith("tierflow.")), None)
    if own is None:
        error = cls(f"a {cls.__name__} message")
    else:
        args, kwargs = [], {}
        for p in list(inspect.signature(own.__init__).parameters.values())[1:]:
            value = sample(p.name, p.annotation, p.default)
            if p.kind is p.KEYWORD_ONLY:
                kwargs[p.name] = value
            else:
                args.append(value)
        error = cls(*args, **kwargs)
    for base in cls.__mro__:
        if not base.__module__.startswith("tierflow."):
            continue
        for field, default in vars(base).items():
            if not field.startswith("_") and type(default) in (str, int, bool) and field not in vars(error):
                setattr(error, field, sample(field, type(default).__name__, default))
    return error


CLASSES = exception_classes()


def test_the_walk_finds_the_exceptions_of_every_layer() -> None:
    names = {c.__qualname__ for c in CLASSES}
    assert {"ProviderError", "ContextWindowExceeded", "BudgetExceeded", "GroupTooLarge", "LinkError"} <= names
    assert {"TemplateMissing", "CsvEncodingError", "ExportFeedbackError", "TrialError", "OpsError"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_an_exception_keeps_its_message_and_fields_through_pickle(cls: type[BaseException]) -> None:
    error = instance(cls)
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is cls
    assert str(restored) == str(error) and restored.args == error.args
    assert vars(restored) == vars(error)

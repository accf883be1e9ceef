"""The pip requirements of the image: what MLflow recorded for each served model, merged with the server's pins.

MLflow writes a `requirements.txt` beside every logged model (`mlflow.pyfunc.get_model_dependencies`
downloads it). The image serves the champion and the challenger, so one Python environment must satisfy
the server's own pins and every served model's requirements at once. `model_packages` is what the models
add to the image; `check_requirements` checks with `packaging` that everything holds together: an exact
pin (`==`) of a package must lie inside every other requirement on the same package, from whichever
source, and two different exact pins conflict. Every conflict is reported at once, naming the package,
both sides and where each came from.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from infra.errors import ImageBuildError

SERVER = "the model server"
# mlflow/environment_variables.py: MLflow's HTTP client settings, read at each request.
_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


class RequirementConflict(ImageBuildError):
    """The server's pins and the served models' requirements cannot hold in one environment."""

    def __init__(self, conflicts: list[str]):
        self.conflicts = conflicts
        lines = "\n".join(f"  - {conflict}" for conflict in conflicts)
        super().__init__(
            f"the image cannot satisfy every served model ({len(conflicts)} conflict(s)):\n{lines}\n"
            "Re-log the model with requirements the server accepts (mlflow.*.log_model(pip_requirements=...)), "
            "or serve versions that agree."
        )


@dataclass(frozen=True)
class Sourced:
    """One requirement and who asked for it (the server, or a model URI)."""

    requirement: Requirement
    source: str

    def __str__(self) -> str:
        return f"{self.requirement} ({self.source})"


def parse_lines(lines: Iterable[str], source: str) -> list[Sourced]:
    """Requirement lines as written in a requirements.txt; comments, blanks and pip options are skipped."""
    parsed = []
    for line in lines:
        text = line.split(" #", 1)[0].strip()
        if not text or text.startswith(("#", "-")):
            continue
        try:
            parsed.append(Sourced(Requirement(text), source))
        except InvalidRequirement as err:
            raise ImageBuildError(f"{source}: requirement {text!r} is not valid: {err}") from err
    return parsed


def exact_pin(requirement: Requirement) -> str | None:
    """The version of an `==X` (or `===X`) pin, else None."""
    for specifier in requirement.specifier:
        if specifier.operator in ("==", "===") and "*" not in specifier.version:
            return specifier.version
    return None


def compatible(first: Sourced, second: Sourced) -> bool:
    """False when an exact pin of one lies outside the other's specifier."""
    for pinned, other in ((first, second), (second, first)):
        version = exact_pin(pinned.requirement)
        if version is not None and not other.requirement.specifier.contains(version, prereleases=True):
            return False
    return True


def conflicts(requirements: list[Sourced]) -> list[str]:
    """Every pair of requirements on the same package that cannot both hold."""
    by_name: dict[str, list[Sourced]] = defaultdict(list)
    for item in requirements:
        if item.requirement.marker is None or item.requirement.marker.evaluate():
            by_name[canonicalize_name(item.requirement.name)].append(item)
    return [
        f"{name}: {first} against {second}"
        for name in sorted(by_name)
        for index, first in enumerate(by_name[name])
        for second in by_name[name][index + 1:]
        if not compatible(first, second)
    ]


def model_packages(models: Mapping[str, list[str]]) -> tuple[str, ...]:
    """Every requirement the served models recorded (model URI -> its requirement lines), once each, sorted."""
    packages = {str(item.requirement) for uri, lines in models.items() for item in parse_lines(lines, uri)}
    return tuple(sorted(packages, key=str.lower))


def check_requirements(server_pins: list[str], models: Mapping[str, list[str]]) -> None:
    """Raise RequirementConflict, listing every conflict, unless the server's pins and every model's requirements hold together."""
    server = parse_lines(server_pins, SERVER)
    from_models = [item for uri, lines in models.items() for item in parse_lines(lines, uri)]
    problems = conflicts(server + from_models)
    if problems:
        raise RequirementConflict(problems)


def recorded_requirements(registry_uri: str, model_uri: str) -> list[str]:
    """The requirements.txt MLflow recorded with `model_uri`, read from the registry at `registry_uri`."""
    import mlflow
    import mlflow.pyfunc

    previous_tracking, previous_registry = os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI")
    mlflow.set_tracking_uri(registry_uri)
    mlflow.set_registry_uri(registry_uri)
    # An unreachable registry fails at once with its reason rather than after MLflow's minutes of retries.
    previous_http = {name: os.environ.get(name) for name in _HTTP_SETTINGS}
    os.environ.update(_HTTP_SETTINGS)
    try:
        path = mlflow.pyfunc.get_model_dependencies(model_uri, format="pip")
        with open(path) as file:
            return file.read().splitlines()
    except Exception as err:  # noqa: BLE001 - MLflow raises many types; each becomes one clear message
        raise ImageBuildError(
            f"cannot read the pip requirements of {model_uri} from the registry at {registry_uri}: "
            f"{type(err).__name__}: {str(err)[:500]}\n"
            "The image build needs them; if this machine reaches the registry elsewhere than model.trackingUri, "
            "set MLSERVE_MODEL_REGISTRY_URI to that address."
        ) from err
    finally:
        mlflow.set_tracking_uri(previous_tracking or "")
        mlflow.set_registry_uri(previous_registry or "")
        for name, value in previous_http.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

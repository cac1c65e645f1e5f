"""The benchop.io/v1alpha1 API: typed models, durations, conditions, CRD rendering.

Modules: ``models`` (BenchmarkRun, Experiment and their parts), ``durations``
(``Duration``), ``conditions`` (types and ``set_condition``), ``crdgen``
(renders crds/ from the models), ``sweep`` (dict helpers for Experiment sweeps).
"""

from benchop.api.durations import Duration, parse_duration
from benchop.api.models import (
    BenchmarkRun,
    BenchmarkRunSpec,
    BenchmarkRunStatus,
    Experiment,
    ExperimentSpec,
    ExperimentStatus,
    Phase,
    format_validation_error,
    load_manifest,
    to_wire,
)

__all__ = [
    "BenchmarkRun",
    "BenchmarkRunSpec",
    "BenchmarkRunStatus",
    "Duration",
    "Experiment",
    "ExperimentSpec",
    "ExperimentStatus",
    "Phase",
    "format_validation_error",
    "load_manifest",
    "parse_duration",
    "to_wire",
]

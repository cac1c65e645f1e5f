"""The CI budget of the fuzz tests: hypothesis, derandomized (the same inputs on every run,
so CI never fails at random), a fixed number of examples per target, no example database.

``hack/fuzz.py`` runs the same targets for as long as asked (atheris for codec, sse and
http; hypothesis with fresh random seeds for the rest) and saves what it finds into
``corpus/<target>/``, which ``test_fuzz_corpus.py`` replays.
"""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings

SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
SUPPRESS.append(HealthCheck.function_scoped_fixture)


def budget(examples: int) -> settings:
    """Settings of one bounded CI fuzz test: ``examples`` derandomized inputs."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=SUPPRESS,
        # no explain phase: it writes patch files into .hypothesis/
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )

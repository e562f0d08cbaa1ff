"""collapse: model-collapse experiments as content-addressed stage graphs."""

from collapse.results import results  # noqa: E402,F401  (light: pandas and torch load on the first call)

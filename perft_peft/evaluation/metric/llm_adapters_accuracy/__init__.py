"""A package only so that setuptools installs the metric script beside it; `evaluate` loads that script by path."""

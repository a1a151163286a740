"""The benchmark harness behind ``benchmarks/*.py``: measurement (speed, memory, FLOPs), method specs, the synthetic
world and the paper sweep. Not part of the installed package (as peft's ``method_comparison/``): the scripts import
it as ``harness`` from their own folder, the tests through setup.cfg's ``pythonpath``."""

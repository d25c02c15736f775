"""pipelines.

Importing any entry point (``python -m pipelines.X``) first puts cuBLAS's deterministic workspace in
the environment, before torch is imported and so before CUDA can start: the value of
``diffc.determinism.CUBLAS_WORKSPACE`` (kept here as a literal, since that module imports torch and
``pipelines.compress`` refuses a bad output before importing it; tests/test_determinism.py checks
that the two agree). A value the user exported is kept.
"""
import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

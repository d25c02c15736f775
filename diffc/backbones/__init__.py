"""Built-in backbones; importing this package registers them.

The diffusers adapters import diffusers/transformers lazily (inside their constructors), so
importing this package stays cheap for the analytic ``gaussian`` backbone.
"""
from . import flux, gaussian, stable_diffusion  # noqa: F401

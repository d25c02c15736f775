"""Built-in backbones; importing this package registers them.

The diffusers adapters import diffusers/transformers lazily (inside their constructors), so
importing this package stays cheap for the analytic ``gaussian`` backbone. A new backbone is one
module here (registering its names with ``diffc.backbone.register_backbone``), its import below,
and ``conf/model/NAME.yaml``.
"""
from . import ddpm, flux, gaussian, sd3, stable_diffusion  # noqa: F401

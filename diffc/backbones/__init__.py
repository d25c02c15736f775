"""Built-in backbones; importing this package registers them."""
from . import gaussian  # noqa: F401

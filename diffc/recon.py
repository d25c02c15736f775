"""How a decoder turns the transmitted x_t into an image: one value, validated in one place.

``mode``: ``ode`` = the probability-flow ODE (DDIM, eta = 0) down to t = 0, or ``denoise`` = the
one-step posterior mean E[x0 | x_t]. ``grid`` (``ode``): ``uniform`` = ``steps`` even steps from t
to 0; ``reference`` = the reference implementation's denoising timesteps below t
(``diffc.schedule.REFERENCE_DENOISING_TIMESTEPS``); or an explicit list of strictly decreasing
timesteps. ``guidance``: the network's guidance scale (None = the encoder's, the backbone's).

A reconstruction is a decode-time choice: it is written in the header (the encoder's choice, so a
file decodes to the image its sender saw) but not in the fingerprint (it does not change x_t), and
``DiffcCodec.decode`` may override each field.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .checks import checked_int

MODES = ("denoise", "ode")
#: named reconstruction grids (index = the byte in a .diffc header; ``diffc.schedule.recon_timesteps``)
RECON_GRIDS = ("uniform", "reference")
#: most steps of a reconstruction, and the largest timestep of a grid (the format's varint bound)
MAX_STEPS = 1000
#: most timesteps of an explicit grid
MAX_GRID = 1000
#: largest guidance scale, in steps of 1/16 (the format stores 16 x scale)
MAX_GUIDANCE = 64.0
#: the option names of decode-time overrides (``decompress recon=... recon_steps=...``) -> Recon fields
OPTION_KEYS = {"recon": "mode", "recon_steps": "steps", "recon_grid": "grid", "recon_guidance": "guidance"}


@dataclass(frozen=True)
class Recon:
    """A reconstruction choice (see the module docstring). Raises ValueError on a bad value."""

    mode: str = "ode"
    steps: int = 50
    grid: str | tuple[int, ...] = "uniform"
    guidance: float | None = None

    def __post_init__(self):
        grid = self.grid if isinstance(self.grid, str) else tuple(int(t) for t in self.grid)
        object.__setattr__(self, "grid", grid)
        if self.guidance is not None:
            object.__setattr__(self, "guidance", float(self.guidance))
        if self.mode not in MODES:
            raise ValueError(f"recon must be one of {MODES}, got {self.mode!r}")
        checked_int("recon_steps", self.steps, 1, MAX_STEPS)
        if isinstance(grid, str) and grid not in RECON_GRIDS:
            raise ValueError(f"recon_grid must be one of {RECON_GRIDS} or a list of timesteps, got {grid!r}")
        if isinstance(grid, tuple) and (not 1 <= len(grid) <= MAX_GRID or list(grid) != sorted(set(grid), reverse=True)
                                        or grid[-1] < 0 or grid[0] > MAX_STEPS):
            raise ValueError(f"a recon_grid list must hold 1..{MAX_GRID} strictly decreasing timesteps in "
                             f"0..{MAX_STEPS}, got {list(grid)}")
        g = self.guidance
        if g is not None and not (0 <= g <= MAX_GUIDANCE and (16 * g) % 1 == 0):
            raise ValueError(f"recon_guidance must be in 0..{MAX_GUIDANCE:g} in steps of 1/16, got {g}")

    def override(self, **options: Any) -> "Recon":
        """This choice with the given flat options replaced (None = keep)."""
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown reconstruction options {unknown} (known: {', '.join(OPTION_KEYS)})")
        return replace(self, **{OPTION_KEYS[k]: v for k, v in options.items() if v is not None})

"""One conversion layer from a network's raw output to the x0 estimate, in the VP view.

The chain of DiffC always lives in VP coordinates x_t = a x0 + s eps (see ``diffc.schedule``).
Backbones differ in what their network takes and returns:

- ``epsilon``      : input x_t,            output eps_hat;   x0 = (x_t - s eps_hat) / a
- ``sample``       : input x_t,            output x0_hat
- ``v_prediction`` : input x_t,            output v = a eps - s x0;   x0 = a x_t - s v
- ``flow``         : input x_flow = x_t / (a + s) = (1-sigma) x0 + sigma eps with sigma = s / (a + s),
                     output velocity v = eps - x0;   x0 = x_flow - sigma v

At the pure-noise start (a = 0) an ``epsilon`` network cannot give x0; backbones evaluate it
at their last training timestep instead (``network_timestep``) and convert with that step's a, s.
"""
from __future__ import annotations

import torch

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "sample", "v_prediction", "flow")


def network_input(x_t: torch.Tensor, a: float, s: float, prediction_type: str) -> torch.Tensor:
    """Map the VP state to what the network takes (flow models take x_t / (a + s))."""
    return x_t / (a + s) if prediction_type == "flow" else x_t


def flow_sigma(a: float, s: float) -> float:
    """The flow-matching sigma of the VP point (a, s): sigma = s / (a + s)."""
    return s / (a + s)


def x0_from_output(output: torch.Tensor, x_t: torch.Tensor, a: float, s: float,
                   prediction_type: str) -> torch.Tensor:
    """Convert a raw network output at VP state x_t (amplitudes a, s) into the x0 estimate."""
    if prediction_type == "epsilon":
        if a <= 0:
            raise ValueError("epsilon prediction cannot give x0 at a = 0; evaluate at the last training step")
        return (x_t - s * output) / a
    if prediction_type == "sample":
        return output
    if prediction_type == "v_prediction":
        return a * x_t - s * output
    if prediction_type == "flow":
        sigma = flow_sigma(a, s)
        return x_t / (a + s) - sigma * output
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")

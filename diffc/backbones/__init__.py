"""diffc/backbones."""

"""The DDCM peers as channels of the chain (docs/peers.md): their specs (``spec``, torch-free) and
their channels (``channel``)."""

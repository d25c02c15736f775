"""The reverse-channel coder (docs/design.md §1): DiffC's PFR channel, its spec, search and plan
(``channel``, ``pfr``), its candidate generators (i.i.d. hashed normals, ``randomness`` and the fused
kernels of ``fused``; sparse sums, ``sparse_sum``) and its entropy model (``entropy``)."""

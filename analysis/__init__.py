"""Reading results: figures, reports and tables from the parquet files that ``pipelines.evaluate``
writes, and what every command shares (``schema``: the results contract; ``cli``: the Hydra glue;
``errors``: the one-line error convention).

``pipelines`` imports this package; nothing here imports ``diffc`` or ``pipelines``
(docs/design.md §6, tests/test_layering.py).
"""

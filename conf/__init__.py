"""The Hydra configs of diffc-pipeline (``conf/*.yaml`` and its config groups).

Installed as the package ``diffc_conf`` (pyproject.toml ``package-dir``), so that the commands find
their configs through the installed package (``pipelines.common.CONF_DIR``), from a wheel as from a checkout.
"""

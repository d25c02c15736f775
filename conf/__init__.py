"""The Hydra configs of diffc-pipeline (``conf/*.yaml`` and its config groups).

Installed as the package ``diffc_conf`` (pyproject.toml ``package-dir``), so that the commands find
their configs through the installed package (``analysis.cli.CONF_DIR``), from a wheel as from a checkout.
"""

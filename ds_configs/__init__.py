"""The DeepSpeed configs shipped with gapt-ds (docs/configs.md), installed as package data so that the
recipes find them in an installed package; read them with ``gapt_ds.recipes.run.shipped_config``."""

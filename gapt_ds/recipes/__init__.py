"""The paper's experiments as runnable recipes (spec §6); see README.md, "Recipes and reports"."""

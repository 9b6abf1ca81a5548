"""The paper's experiments as runnable recipes (spec §6); see docs/recipes.md."""

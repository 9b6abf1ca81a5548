"""The paper's experiments as runnable recipes (docs/algorithm.md §6); see README.md, "Recipes and reports"."""

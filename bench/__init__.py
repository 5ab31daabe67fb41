"""bgjob's benchmark harness: `python -m bench [--quick] [--only NAME]` (see bench/RESULTS.md)."""

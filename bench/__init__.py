"""bgjob's benchmark harness: `python -m bench [--quick] [--only NAME]` (see bench/README section in the top README)."""

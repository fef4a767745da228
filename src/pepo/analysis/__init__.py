"""Looking inside runs: training curves, token-level analyses."""

"""`make bench`: speed figures of rdv, side by side with the paper's (BENCH_QUICK=1 for a short run)."""

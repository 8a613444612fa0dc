"""Comparing finished runs: tables with spreads, seed-group verdicts, the self-contained page, the
end-of-run summary, and queueing seed replicates."""

"""Local mode: ``benchop run FILE`` runs a BenchmarkRun or Experiment on one machine."""

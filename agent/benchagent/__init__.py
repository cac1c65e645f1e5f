"""benchagent: the per-node GPU agent of benchop (NVML sampler, exporter, baseline server)."""

"""The load engine: ``LoadRunner.run(schedule, workload, limits)``, the streaming client, schedules,
workloads, self-check, engine gauges, burst shapes, locust as a process, and ``gpuinfer-load``."""

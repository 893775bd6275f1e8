"""The load engine: streaming client, arrival schedules, runner with self-check, the command."""

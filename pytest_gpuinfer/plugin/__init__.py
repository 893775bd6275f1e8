"""The pytest glue: hooks, fixtures, options, run state and extension hooks for other plugins."""

"""Progressive delivery for mlserve: routers, metrics providers, analysis, the canary scheduler, and the CLI."""

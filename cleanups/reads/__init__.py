"""Read-model queries for the pages and /metrics: what the fleet and a schedule look like."""

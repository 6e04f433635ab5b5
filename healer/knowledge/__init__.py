"""Knowledge: the append-only event log and the projections rebuilt from it."""

"""healer: a self-healing and disaster-recovery daemon for fleets of AI agents."""

__version__ = "0.1.0"

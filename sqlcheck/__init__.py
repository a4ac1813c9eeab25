"""sqlcheck: Celery workers that lint uploaded ZIPs of SQL files with SQLFluff."""

__version__ = "0.1.0"

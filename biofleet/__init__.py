"""biofleet: declarative fleets of LLM inference servers on SLURM."""

__version__ = "0.1.0"

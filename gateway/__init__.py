"""RemoteGPU Gateway: a Litestar service that turns a Slurm cluster into a GPU platform."""

__version__ = "0.1.0"

"""The Pi-side agent: sensors -> sampler -> durable buffer -> uplink."""

__version__ = "0.1.0"

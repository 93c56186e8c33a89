"""The Pi-side agent: sensors -> sampler -> durable buffer -> uplink."""

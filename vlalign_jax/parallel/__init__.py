"""Device meshes, logical-axis sharding rules and cross-device helpers."""

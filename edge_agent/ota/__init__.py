"""Over-the-air model updates: signed manifests, verified downloads, atomic activation, probation."""

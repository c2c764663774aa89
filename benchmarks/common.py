"""What the benchmark scripts share: a real mosquitto on a free loopback port (the one `edge-agent bench` uses)."""

from edge_agent.bench import Broker, free_port

__all__ = ["Broker", "free_port"]

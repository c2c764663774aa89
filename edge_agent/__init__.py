"""edge-agent: on-device inference with LiteRT, results and health over MQTT."""

__version__ = "0.1.0"

"""edgeward: on-device sensor inference with an encrypted store and MQTT uplink."""

__version__ = "0.1.0"

"""Configuration: the typed model, the YAML loader and the cross-field checks."""

from edgeward.config.loader import load_config, load_config_text
from edgeward.config.schema import Config

__all__ = ["Config", "load_config", "load_config_text"]

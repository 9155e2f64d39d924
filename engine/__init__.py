"""clusterlab's headless core: data, model, training, co-clustering, sessions and the threaded Engine."""

from engine.config import Config
from engine.engine import Engine
from engine.errors import ClusterlabError, ConfigError, DataError, SessionError, TrainingError

__all__ = ["Config", "Engine", "ClusterlabError", "ConfigError", "DataError", "SessionError", "TrainingError"]

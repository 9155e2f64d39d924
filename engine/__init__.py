"""clusterlab's headless core: data, model, training, co-clustering, sessions and the threaded Engine."""

from engine.config import Config
from engine.errors import ClusterlabError, ConfigError, DataError, SessionError, TrainingError

__all__ = ["Config", "Engine", "ClusterlabError", "ConfigError", "DataError", "SessionError", "TrainingError"]


def __getattr__(name: str):
    # Engine pulls in torch and scikit-learn (seconds); `clusterlab --help` and flag errors need neither.
    if name == "Engine":
        from engine.engine import Engine

        return Engine
    raise AttributeError(f"module 'engine' has no attribute {name!r}")

"""dait-cache: DAIT distillation with a cached, replayable VLM feature store."""

__version__ = "0.1.0"

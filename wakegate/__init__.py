"""wakegate: serverless LLM deployments on your own GPUs."""

__version__ = "0.1.0"

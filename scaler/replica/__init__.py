"""Code that runs inside a replica process (its entry points), not in the scaler itself.

The names here are what the scaler's launch (scaler/engines/) and an entry point agree on;
this module imports nothing, so the launch does not pull an engine's packages in.
"""

# llama.cpp (scaler/replica/llamacpp.py): the chat format every replica registers, and the
# environment variable naming the model's chat template.
LLAMACPP_CHAT_FORMAT = "wakegate"
CHAT_TEMPLATE_ENV = "WAKEGATE_CHAT_TEMPLATE"

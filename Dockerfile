# vram-exporter: multi-stage, slim, non-root. NVML comes from the host driver through the NVIDIA
# container runtime (run with --gpus all, or runtimeClassName: nvidia on Kubernetes).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY vram_exporter ./vram_exporter
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin exporter
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The NVIDIA runtime mounts libnvidia-ml.so only when these ask for it ("utility" = NVML, nvidia-smi).
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility \
    PYTHONUNBUFFERED=1
USER 10001
EXPOSE 9845
ENTRYPOINT ["vram-exporter"]
CMD ["--web.listen-address=:9845"]

# The portal image: one entry point (`portal`) for every role — API, worker, migrations.
# Build: docker build -t recovery-portal .   Run: see compose.yaml and the README.

# Stage 1: build the wheel and its dependencies into a virtual environment.
FROM python:3.12-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/portal
COPY pyproject.toml README.md /src/
COPY app /src/app
COPY jobs /src/jobs
COPY migrations /src/migrations
COPY ml /src/ml
COPY portal /src/portal
COPY resolvers /src/resolvers
COPY sandbox /src/sandbox
COPY schema /src/schema
RUN /opt/portal/bin/pip install /src

# Stage 2: the runtime, without build tools, running as an unprivileged user.
FROM python:3.12-slim-bookworm
# LightGBM links the system OpenMP runtime.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin portal
COPY --from=build /opt/portal /opt/portal
ENV PATH=/opt/portal/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORTAL_ENVIRONMENT=production \
    PORTAL_HOST=0.0.0.0 \
    PORTAL_PORT=8000
USER 10001
EXPOSE 8000
ENTRYPOINT ["portal"]
CMD ["serve"]

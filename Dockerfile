# One image runs every Vetgate process; the compose file picks the command.

FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A venv keeps the install self-contained so the runtime stage can copy it whole.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY services/ services/
RUN pip install --no-cache-dir .


FROM python:3.11-slim AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VETGATE_HOST=0.0.0.0

RUN groupadd --system --gid 10001 vetgate \
 && useradd --system --uid 10001 --gid vetgate --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin vetgate

COPY --from=build /opt/venv /opt/venv

# The sources stay root-owned and read-only to the service user; they back `python -m services.<name>`.
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY services/ services/

USER vetgate

EXPOSE 8001-8004

CMD ["vetgate", "--help"]

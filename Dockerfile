# autoresearch-tui on a GPU workstation or server.
#   docker build -t autoresearch-tui .
#   docker run --gpus all -it -v $PWD:/repo -v autoresearch-cache:/cache autoresearch-tui --repo /repo
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

# git for the lanes' worktrees; gcc for Triton, which compiles small launchers at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git gcc ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /uvx /usr/local/bin/
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON=3.12 \
    AUTORESEARCH_CACHE=/cache PATH="/app/.venv/bin:$PATH"

WORKDIR /app
# Dependencies first, so editing the project does not re-download torch.
COPY pyproject.toml README.md ./
RUN uv sync --no-dev --no-install-project
COPY . .
RUN uv sync --no-dev

VOLUME /cache
ENTRYPOINT ["autoresearch-tui"]

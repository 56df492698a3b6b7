# syntax=docker/dockerfile:1
# Multi-stage: install (every dependency, for the compiler), build (dist/), prod-deps (runtime
# dependencies only), runtime. Only dist/, package.json and the production node_modules reach
# the final image: no TypeScript, no tsx, no embedded PostgreSQL.

FROM node:24-bookworm-slim AS install
WORKDIR /app
COPY package.json package-lock.json ./
# No dependency needs its install scripts to compile: the TypeScript compiler ships per platform as
# an optional package, and the embedded PostgreSQL binaries are only for development.
RUN --mount=type=cache,target=/root/.npm \
    npm ci --ignore-scripts --no-audit --no-fund

FROM install AS build
COPY . .
RUN npm run build

FROM node:24-bookworm-slim AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
# No production dependency has an install script, so --ignore-scripts loses nothing and keeps
# the allowScripts policy out of the runtime install.
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM node:24-bookworm-slim AS runtime
# tini as PID 1 forwards SIGTERM to node (whose drain then runs) and reaps zombies. npm and
# corepack are removed: the service runs `node` only, and they are the image's largest source of
# scanner findings.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack \
       /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack
ENV NODE_ENV=production \
    PORT=3000
WORKDIR /app
# Owned by root and read-only to the service user: the process cannot rewrite its own code.
COPY package.json ./
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
USER node
# 3000: the API (PORT); 9464: /metrics and readiness details when METRICS_PORT=9464, as in deploy/.
EXPOSE 3000 9464
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "dist/server.js"]

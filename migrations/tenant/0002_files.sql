-- Metadata of the tenant's files; the bytes live in object storage under tenants/<tenant id>/.
-- The key is built by the service (tenants/<tenant id>/<id>/<sanitised name>), never by a client.
-- A file is 'pending' from the moment an upload URL is handed out until the object was checked.
CREATE TABLE files (
  id           uuid PRIMARY KEY,
  key          text NOT NULL UNIQUE,
  filename     text NOT NULL,
  content_type text NOT NULL,
  size         bigint NOT NULL CHECK (size > 0),
  status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'uploaded')),
  created_at   timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  updated_at   timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now())
);

CREATE INDEX files_created_at_id_idx ON files (created_at, id);

-- Runs with search_path set to the tenant's schema: names stay unqualified.
-- Timestamps keep millisecond precision so that they survive a round trip through a JS Date
-- unchanged: pagination cursors carry them.
CREATE TABLE users (
  id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  email      text NOT NULL,
  name       text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  updated_at timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now())
);

-- Email is unique per tenant, case-insensitively.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE INDEX users_created_at_id_idx ON users (created_at, id);

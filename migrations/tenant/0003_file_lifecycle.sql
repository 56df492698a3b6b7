-- The life of a file after DELETE, and the quota's lock.
--
-- A deleted file keeps a row with status 'deleted' until its upload URL has expired and a sweep
-- has removed whatever a late PUT left under its key (lib/files/sweep.ts): the row keeps counting
-- toward the quota meanwhile, so deleting a file and then using its URL cannot store more than the
-- quota allows. upload_expires_at is when the file's presigned PUT stops working; rows from before
-- this column are given an hour from now, past any URL signed before (PRESIGN_EXPIRES_SECONDS ≤
-- 3600). Not `created_at + interval`: that is STABLE on a column, which Citus refuses in an UPDATE.
ALTER TABLE files DROP CONSTRAINT files_status_check;
ALTER TABLE files ADD CONSTRAINT files_status_check CHECK (status IN ('pending', 'uploaded', 'deleted'));
ALTER TABLE files ADD COLUMN upload_expires_at timestamptz;
UPDATE files SET upload_expires_at = now() + interval '1 hour';
-- The same for rows written by code that does not know the column yet (during a rolling deploy).
ALTER TABLE files ALTER COLUMN upload_expires_at SET DEFAULT now() + interval '1 hour';
ALTER TABLE files ALTER COLUMN upload_expires_at SET NOT NULL;
CREATE INDEX files_upload_expires_at_idx ON files (upload_expires_at);

-- Uploads go to a staging key, `<file id>/.upload`, which completion copies to the file's key.
-- Rows written before (or, during a rolling deploy, by code that does not know this column) were
-- given URLs that write the file's key itself; they are completed where they are.
ALTER TABLE files ADD COLUMN staged boolean NOT NULL DEFAULT false;

-- A completion copies the uploaded object to the file's key. Only one completion of a file may do
-- so at a time: it claims the file (a token, until a time past which a stalled one is presumed
-- dead), and only the holder of the claim marks it uploaded. Otherwise a second completion could
-- copy bytes PUT after the first had finished.
ALTER TABLE files ADD COLUMN completion_claim uuid;
ALTER TABLE files ADD COLUMN completion_claim_until timestamptz;

-- One row, locked (SELECT ... FOR UPDATE) by every quota check of the tenant, so that concurrent
-- uploads queue for it and cannot both fit in the same remaining space. It lives in the tenant's
-- own schema: no other tenant's role can take it.
CREATE TABLE file_quota_lock (
  id bigint PRIMARY KEY CHECK (id = 1)
);
INSERT INTO file_quota_lock (id) VALUES (1);

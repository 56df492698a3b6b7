-- Members backed by the Cognito user pool (lib/users/members.ts). `sub` is the pool user's
-- subject, NULL for a user the pool does not know (or not yet: see `status`). `role` is the
-- member's authority inside this tenant, checked by the service on every member change.
-- `status` is 'inviting' from the moment the row is written until the pool user is created and
-- its sub recorded: a row left 'inviting' by a failure is finished by repeating the invitation,
-- and tenant deletion looks such a pool user up by email.
ALTER TABLE users ADD COLUMN sub text;
-- Each constraint added on its own, named: Citus refuses a constraint inside ADD COLUMN.
ALTER TABLE users ADD COLUMN role text NOT NULL DEFAULT 'member';
ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN ('admin', 'member'));
ALTER TABLE users ADD COLUMN status text NOT NULL DEFAULT 'active';
ALTER TABLE users ADD CONSTRAINT users_status_check CHECK (status IN ('inviting', 'active'));
CREATE UNIQUE INDEX users_sub_key ON users (sub);

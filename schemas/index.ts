import { ErrorBody } from './errors.ts'
import { File } from './file.ts'
import { Tenant, TenantUsage } from './tenant.ts'
import { User } from './user.ts'

/** Schemas with an `$id`, registered once so routes can reference them and OpenAPI names them. */
export const sharedSchemas = [ErrorBody, Tenant, TenantUsage, User, File]

import swagger, { type FastifyDynamicSwaggerOptions } from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { documentHeaders } from './helmet.ts'

export const swaggerOptions: FastifyDynamicSwaggerOptions = {
  openapi: {
    openapi: '3.0.3',
    info: {
      title: 'Tenant service',
      description:
        'Schema-per-tenant API. Tenant-scoped routes take the tenant in the X-Tenant-ID header. Every error answer has ' +
        'one shape; each route lists, per status, the codes it can answer with.',
      version: '0.1.0',
      license: { name: 'MIT', url: 'https://opensource.org/licenses/MIT' }
    },
    // Relative: the API is served where this document is, whatever the deployment's address.
    servers: [{ url: '/', description: 'This deployment' }],
    tags: [
      { name: 'tenants', description: 'Tenant lifecycle (control plane)' },
      { name: 'users', description: 'Users of one tenant' },
      { name: 'health', description: 'Probes' }
    ],
    components: {
      securitySchemes: {
        bearerAuth: {
          type: 'http',
          scheme: 'bearer',
          bearerFormat: 'JWT',
          description: 'An access or ID token of the configured issuer (Cognito user pool), RS256-signed.'
        }
      }
    }
  },
  // A folder's index route is registered as `/users/` as well as `/users`; the contract names the
  // path without the slash, as the README and clients spell it.
  transform: ({ schema, url }) => ({ schema, url: url.length > 1 ? url.replace(/\/+$/, '') : url }),
  refResolver: {
    // Shared schemas keep their $id as the component name.
    buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`)
  }
}

/** OpenAPI 3 document at /docs/json and Swagger UI at /docs, an HTML page, under helmet's whole set of headers for documents. */
export default fp(
  async function openapi(fastify: FastifyInstance) {
    await fastify.register(swagger, swaggerOptions)
    await fastify.register(async function documents(docs) {
      docs.addHook('onRequest', (_request, reply, done) => {
        reply.headers(documentHeaders)
        done()
      })
      await docs.register(swaggerUi, { routePrefix: '/docs' })
    })
  },
  { name: 'swagger', dependencies: ['helmet'] }
)

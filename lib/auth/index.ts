/**
 * Authentication: the issuer's signing keys (JWKS), what a verified token's claims make of the
 * caller, and the guards that bind callers to tenants (DESIGN §5, §6 layer 3).
 */
export { createGuards } from './guards.ts'
export { createKeyStore, jwksUrl, KeyLookupError, type KeyStore } from './jwks.ts'
export { createAcceptedTokens, createPrincipalReader, DETERMINISTIC_TOKEN_ERRORS, tokenInvalid, type Principal } from './token-claims.ts'

// Copies migrations/ into the build output (default dist/, or the directory given as the first
// argument), where lib/tenants/migrations.ts looks for it from dist/lib/tenants/.
// The old copy is removed first: a migration deleted or renamed in the source must not survive in
// dist/ and be applied from there.
import { cp, rm } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const outDir = path.resolve(root, process.argv[2] ?? 'dist')
const target = path.join(outDir, 'migrations')

await rm(target, { recursive: true, force: true })
await cp(path.join(root, 'migrations'), target, {
  recursive: true,
  filter: (source) => !path.basename(source).startsWith('.')
})
console.log(`copied migrations/ to ${path.relative(root, target) || target}`)

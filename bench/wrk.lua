-- wrk (https://github.com/wg/wrk) against `npm run bench -- --serve`, each request to a tenant
-- picked uniformly from the tenants file that --serve writes (id, token, a user id; tab-separated):
--
--   wrk -t2 -c50 -d10 -s bench/wrk.lua <url> -- <tenants.tsv> root    GET /, X-Tenant-ID
--   wrk -t2 -c50 -d10 -s bench/wrk.lua <url> -- <tenants.tsv> users   GET /users/:id with the token
--
-- <url> is the service's or the bare process's address: both answer both routes.

local tenants = {}
local route = "root"

function init(args)
  local file = args[1] or error("usage: wrk ... -s bench/wrk.lua <url> -- <tenants.tsv> [root|users]")
  route = args[2] or "root"
  if route ~= "root" and route ~= "users" then error("route must be root or users, not " .. route) end
  for line in io.lines(file) do
    local id, token, user = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)$")
    if id then tenants[#tenants + 1] = { id = id, token = token, user = user } end
  end
  if #tenants == 0 then error("no tenants in " .. file) end
  -- Each thread has a Lua state of its own; its CPU time so far tells their seeds apart.
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  local tenant = tenants[math.random(#tenants)]
  if route == "users" then
    return wrk.format("GET", "/users/" .. tenant.user, { ["x-tenant-id"] = tenant.id, ["authorization"] = "Bearer " .. tenant.token })
  end
  return wrk.format("GET", "/", { ["x-tenant-id"] = tenant.id })
end


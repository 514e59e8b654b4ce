-- GET with If-None-Match: the revalidation an authorization server's cache
-- makes. args[1] is the ETag; a 304 is the expected answer.
local req

function init(args)
  req = wrk.format("GET", nil, { ["If-None-Match"] = args[1] })
end

function request()
  return req
end

-- one finished call's verdict on its own: {before, after}
local transition = apply_verdict(req.verdict)
save_breakers()
return cjson.encode(transition)

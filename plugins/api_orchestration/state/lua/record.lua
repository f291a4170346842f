-- one finished call's verdict on its own: {before, after}
return cjson.encode(apply_verdict(req.verdict))

"""What a request does, written once for the REST routes and the dashboard.

Each module is one thing a request does (trigger, cancel, replay, offload, admission, audit,
matcher notification) or one subject's reads and writes (filters, crons, tokens, ...): plain
async functions taking the collaborators they use (the `ApiState`, a store, a NATS client, the
tenant or the calling principal). They know nothing of HTTP: a refusal is a domain error
(`services.api.repos.errors`, `LimitExceeded`, `PayloadTooLarge`, the 422 `InputInvalid`) that
app.py and the dashboard each turn into their own answer.

`routes/` (thin controllers: parse the request, call an action, shape the response) and `ui/`
(pages) both call down into here; nothing here imports them (the import-linter `layers`
contract in pyproject.toml checks it).
"""

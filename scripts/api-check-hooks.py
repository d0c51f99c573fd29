"""schemathesis hooks for scripts/api-check: a check for the one promise of the API that no built-in check
holds it to, and requests that create sessions, so that there are sessions to read, share and kill.

The OpenAPI document says every error is JSON `{"code", "message"}` with a code from its `Error` schema.
`response_schema_conformance` checks that only for the statuses an operation documents; `errors_are_json`
holds every other refusal to it too, above all what the router answers on its own (a method a path does
not take, a path under /api/v1 that names nothing), which no operation documents.

A session is created only for a target the tenant's policy allows and a lifetime that reads as one, which
requests generated from the schema alone almost never are: every session answer (201, the 200 of GET, the
shares) would go unchecked. So half of the bodies generated for POST /api/v1/sessions are made into one the
tenant acme of scripts/api-check may have (its target, its name, a lifetime or none, an idle timeout or
none), keeping the rest of what was generated; and half of those for a share get a lifetime and an idle
timeout that are ones, or none. Only bodies the
schema allows are changed: a body made to break it (schemathesis' negative cases) stays broken, so the
server still has to refuse it. The other half are sent as generated.
"""

import json

import jsonschema_rs
import schemathesis
from hypothesis import strategies as st

# What scripts/api-check's tenant acme may reach: its policy allows 10.0.0.0/8, ports 5900-5999 and 3389,
# kinds vnc and guacd-rdp, and the guacd pool "default" is configured.
ALLOWED_TARGETS = [
    {"kind": "vnc", "host": "10.0.0.5", "port": 5901},
    {
        "kind": "guacd",
        "protocol": "rdp",
        "guacd": "default",
        "params": {"hostname": "10.0.0.9", "port": "3389", "username": "bob", "password": "hunter2"},
    },
]
LIFETIMES = [None, "1s", "30m", "1h 30m", "100y"]
IDLE_TIMEOUTS = [None, "10s", "15m", "100y"]


def with_durations(body, lifetime, idle_timeout):
    body.pop("lifetime", None)
    body.pop("idle_timeout", None)
    if lifetime is not None:
        body["lifetime"] = lifetime
    if idle_timeout is not None:
        body["idle_timeout"] = idle_timeout
    return body


def allowed_session(body, target, lifetime, idle_timeout):
    return with_durations(dict(body, target=target, tenant="acme"), lifetime, idle_timeout)


def allowed_share(body, lifetime, idle_timeout):
    return with_durations(dict(body), lifetime, idle_timeout)


VALIDATORS = {}


def body_validator(operation):
    """A validator of the request body of the POST at `operation`'s path, against the served document."""
    if operation.path not in VALIDATORS:
        document = operation.schema.raw_schema
        content = document["paths"][operation.path]["post"]["requestBody"]["content"]
        schema = dict(content["application/json"]["schema"], components=document["components"])
        VALIDATORS[operation.path] = jsonschema_rs.validator_for(schema)
    return VALIDATORS[operation.path]


@schemathesis.hook
def flatmap_body(ctx, body):
    operation = ctx.operation
    if operation is None or operation.method.upper() != "POST" or not isinstance(body, dict):
        return st.just(body)
    lifetimes = st.sampled_from(LIFETIMES)
    idle_timeouts = st.sampled_from(IDLE_TIMEOUTS)
    if operation.path == "/api/v1/sessions":
        targets = st.sampled_from(ALLOWED_TARGETS)
        allowed = st.builds(allowed_session, st.just(body), targets, lifetimes, idle_timeouts)
    elif operation.path == "/api/v1/sessions/{id}/shares":
        allowed = st.builds(allowed_share, st.just(body), lifetimes, idle_timeouts)
    else:
        return st.just(body)
    if not body_validator(operation).is_valid(body):
        return st.just(body)
    return st.one_of(st.just(body), allowed)


def documented_codes(case):
    error = case.operation.schema.raw_schema["components"]["schemas"]["Error"]
    return set(error["properties"]["code"]["enum"])


@schemathesis.check
def errors_are_json(ctx, response, case):
    """Every 4xx and 5xx answer is application/json {"code", "message"} with a documented code."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    essence = content_type.split(";")[0].strip().lower()
    if essence != "application/json":
        raise AssertionError(
            f"{response.status_code} answered with content type {content_type!r}, not application/json "
            f"{{code, message}}: {response.content[:200]!r}"
        )
    try:
        body = json.loads(response.content)
    except ValueError as error:
        raise AssertionError(f"{response.status_code} answered a body that is not JSON: {error}")
    if not isinstance(body, dict) or not isinstance(body.get("message"), str):
        raise AssertionError(f"{response.status_code} answered {body!r}, not {{code, message}}")
    codes = documented_codes(case)
    if body.get("code") not in codes:
        raise AssertionError(
            f"{response.status_code} answered code {body.get('code')!r}, not one of {sorted(codes)}"
        )
    return None

"""Schemathesis hooks for the backend's fuzz test (crates/backend/tests/api/fuzz.rs).

`only_not_found`: the second pass sends another user's token with the first user's ids. Every
answer must be a 404, or exactly what the same request answers for an id that exists nowhere
(a body refused before any id is looked at): nothing may tell the caller that those resources
exist. The API's rule: another user's resource is a 404, never a 403 or any other answer.
"""

import uuid

import schemathesis


@schemathesis.check
def only_not_found(ctx, response, case):
    if response.status_code == 404:
        return
    original = dict(case.path_parameters or {})
    case.path_parameters = {**original, "id": str(uuid.uuid4())}
    try:
        auth = response.request.headers.get("Authorization")
        again = case.call(headers={"Authorization": auth} if auth else None)
    finally:
        case.path_parameters = original
    if again.status_code != response.status_code or _code(again) != _code(response):
        raise AssertionError(
            f"another user's resource answered {response.status_code} ({_code(response)}), "
            f"an unknown id {again.status_code} ({_code(again)}): {response.text[:300]}"
        )


def _code(response):
    try:
        return response.json().get("code")
    except Exception:
        return None

"""Fails a 2xx response whose JSON body has an "error" field: a 200 that is
really an error must not count as delivered. The Python twin of
plugins/json-error."""

import json
import json.scanner

import wit_world
from wit_world.imports.log import Level, log
from wit_world.imports.types import Message, Outcome, Outcome_Ack, Outcome_Fail, Response

# The C scanner recurses on the wasm stack and deep nesting traps the call,
# past any `except`; the pure-Python one raises RecursionError instead.
_decoder = json.JSONDecoder()
_decoder.scan_once = json.scanner.py_make_scanner(_decoder)


def error_field(body: bytes) -> str | None:
    """The value of a top-level "error" key, if the body is a JSON object with one."""
    try:
        doc = _decoder.decode(body.decode("utf-8", "replace"))
    except (ValueError, RecursionError):  # not JSON, or too deep: nothing to report
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    if error is None or isinstance(error, str):
        return error
    return json.dumps(error, separators=(",", ":"))


# componentize-py calls the class that has the generated protocol's name.
class WitWorld(wit_world.WitWorld):
    def handle_response(self, message: Message, response: Response) -> Outcome:
        if 200 <= response.status < 300 and (error := error_field(response.body)) is not None:
            return Outcome_Fail(f"endpoint reported an error: {error}")
        log(Level.INFO, f"Response received for {message.id}: status code {response.status} (python)")
        return Outcome_Ack()

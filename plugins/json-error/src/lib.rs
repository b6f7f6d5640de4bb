//! Fails a 2xx response whose JSON body has an `"error"` field: a 200 that is
//! really an error must not count as delivered. Its Python and JavaScript
//! twins are in `plugins/python/json-error` and `plugins/js/json-error`.

wit_bindgen::generate!({ world: "response-handler", path: "../../wit" });

use wharf::plugin::log::{Level, log};

struct JsonError;

/// The value of a top-level `"error"` key, if the body is a JSON object with
/// one that is not null; strings as they are, anything else as compact JSON.
fn error_field(body: &[u8]) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    match doc.get("error")? {
        serde_json::Value::Null => None,
        serde_json::Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

impl Guest for JsonError {
    fn handle_response(message: Message, response: Response) -> Outcome {
        if (200..300).contains(&response.status)
            && let Some(error) = error_field(&response.body)
        {
            return Outcome::Fail(format!("endpoint reported an error: {error}"));
        }
        log(
            Level::Info,
            &format!("Response received for {}: status code {} (rust)", message.id, response.status),
        );
        Outcome::Ack
    }
}

export!(JsonError);

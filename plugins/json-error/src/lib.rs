//! Fails a 2xx response whose JSON body has an `"error"` field: a 200 that is
//! really an error must not count as delivered.

wit_bindgen::generate!({ world: "response-handler", path: "../../wit" });


struct JsonError;

/// The value of a top-level `"error"` key, if the body is a JSON object with one.
/// A deliberately small scan: the guest carries no JSON library.
fn error_field(body: &str) -> Option<String> {
    let body = body.trim();
    if !body.starts_with('{') {
        return None;
    }
    let at = body.find("\"error\"")?;
    let rest = body[at + 7..].trim_start().strip_prefix(':')?.trim_start();
    if rest.starts_with("null") {
        return None;
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().trim_matches('"').to_owned())
}

impl Guest for JsonError {
    fn handle_response(_message: Message, response: Response) -> Outcome {
        match error_field(&String::from_utf8_lossy(&response.body)) {
            Some(error) => Outcome::Fail(format!("status {} but the body says error: {error}", response.status)),
            None => Outcome::Ack,
        }
    }
}

export!(JsonError);

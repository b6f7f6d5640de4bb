//! The guide's response handler: logs the status and body, then acks.

wit_bindgen::generate!({ world: "response-handler", path: "../../wit" });

use wharf::plugin::log::{Level, log};

struct LogResponse;

impl Guest for LogResponse {
    fn handle_response(message: Message, response: Response) -> Outcome {
        let body = String::from_utf8_lossy(&response.body);
        log(
            Level::Info,
            &format!("Response received for {}: status code {}: {body}", message.id, response.status),
        );
        Outcome::Ack
    }
}

export!(LogResponse);

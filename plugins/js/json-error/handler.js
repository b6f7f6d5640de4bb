// Fails a 2xx response whose JSON body has an "error" field: a 200 that is
// really an error must not count as delivered. The JavaScript twin of
// plugins/json-error.
import { log } from 'wharf:plugin/log@0.1.0';

/** The value of a top-level "error" key, if the body is a JSON object with one. */
function errorField(body) {
  let doc;
  try {
    doc = JSON.parse(new TextDecoder().decode(body));
  } catch {
    return undefined; // not JSON: nothing to report
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc) || doc.error == null) {
    return undefined;
  }
  return typeof doc.error === 'string' ? doc.error : JSON.stringify(doc.error);
}

export function handleResponse(message, response) {
  const error = response.status >= 200 && response.status < 300 ? errorField(response.body) : undefined;
  if (error !== undefined) {
    return { tag: 'fail', val: `endpoint reported an error: ${error}` };
  }
  log('info', `Response received for ${message.id}: status code ${response.status} (javascript)`);
  return { tag: 'ack' };
}

// The page's requests to its node, and what the reader is told when one fails: plain words.

// A conversation's path on the page (/c/<id>); the id's pattern is wire.keys.ID_PATTERN's (a test
// holds the two equal).
export const CONVERSATION_PATH = /^\/c\/([A-Za-z0-9_-]{16,64})$/;

// What the reader is told when a request fails: plain words, never "Failed to fetch".
const REFUSALS = {
  busy: "An answer is still being written (perhaps asked from another tab): wait for it, or stop it.",
  rate_limited: "You are sending too fast. Wait a moment and try again.",
  overloaded: "The model is busy with many answers right now. Try again in a few seconds.",
  unavailable: "The service is briefly unavailable. Try again in a few seconds.",
  token_expired: "Your access to this conversation expired. Start a new one.",
  not_found: "This conversation does not exist any more. Start a new one.",
  payload_too_large: "That message is too long.",
  not_last: "Only the last answer can be written again.",
};

export async function api(path, body, headers = {}, method = "POST") {
  let res;
  try {
    res = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new Error(
      navigator.onLine
        ? "Could not reach the server. Check that it is running, then try again."
        : "You are offline. Reconnect, then try again.",
    );
  }
  let json = {};
  try {
    json = await res.json();
  } catch {
    // an empty or non-JSON body (a balancer's error page)
  }
  if (!res.ok) {
    const err = new Error(REFUSALS[json.error] || json.message || `The server refused the request (${res.status}).`);
    err.code = json.error;
    throw err;
  }
  return json;
}

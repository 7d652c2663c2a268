// What the session does when its socket closes: pure decisions, no browser API.

/** `session.terminating` codes a fresh ticket on a new connection can get past. */
export const RETRY_TERMINATING = new Set(["server_shutdown", "upstream_error"]);

/** Close codes with no `session.terminating` that a new connection can get past. */
export const RETRY_CLOSES = new Set([
  1001, // going away
  1006, // dropped: no close frame (network change, edge killed)
  1011, // the edge or the model failed
  1012, // the edge restarts or drains
  1013, // try again later
]);

/**
 * The decision after a socket closed.
 *
 * @param {object} close
 * @param {boolean} close.byClient the app called `close()`
 * @param {boolean} close.opened the handshake succeeded (the socket opened)
 * @param {boolean} close.started `session.started` arrived on this socket
 * @param {string | null} close.startError the code of an `error` refusing `session.start`
 * @param {string | null} close.terminating the code of `session.terminating`, if one came
 * @param {number} close.closeCode the WebSocket close code
 * @returns {{retry: boolean, code: string}} `code` names why (the final code when not retrying)
 */
export function decide({ byClient, opened, started, startError, terminating, closeCode }) {
  if (byClient) return { retry: false, code: "closed" };
  if (startError && !started) return { retry: false, code: startError };
  // A refused handshake never opens: the browser hides the HTTP answer (expired, replayed,
  // revoked, origin, cap) behind close 1006. A fresh ticket fixes the commonest one (expired).
  if (!opened) return { retry: true, code: "handshake_failed" };
  if (terminating) return { retry: RETRY_TERMINATING.has(terminating), code: terminating };
  if (RETRY_CLOSES.has(closeCode)) return { retry: true, code: "connection_lost" };
  if (closeCode === 1000) return { retry: false, code: "closed_by_server" };
  return { retry: false, code: "protocol_error" };
}

/**
 * The wait before reconnect attempt `attempt` (1, 2, ...): exponential with jitter, capped.
 *
 * @param {number} attempt
 * @param {{baseDelayMs: number, maxDelayMs: number}} options
 * @param {() => number} random a number in [0, 1)
 * @returns {number} milliseconds
 */
export function backoff(attempt, { baseDelayMs, maxDelayMs }, random = Math.random) {
  const ceiling = Math.min(maxDelayMs, baseDelayMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/**
 * The client secret out of what `getTicket()` returned: the string, or a mint answer's `client_secret`.
 *
 * @param {unknown} value
 * @returns {string | null} null when it is neither
 */
export function ticketOf(value) {
  const secret = typeof value === "string" ? value : value && typeof value === "object" ? value.client_secret : null;
  // A subprotocol is an HTTP token: a ticket (base64url segments and dots) always is one.
  return typeof secret === "string" && /^[A-Za-z0-9._~-]+$/.test(secret) ? secret : null;
}

/**
 * A config after an update: the update's fields replace the current ones, `null` removes one.
 *
 * @param {Record<string, unknown>} config
 * @param {Record<string, unknown>} update
 * @returns {Record<string, unknown>}
 */
export function mergeConfig(config, update) {
  const merged = { ...config };
  for (const [key, value] of Object.entries(update)) {
    if (value === null) delete merged[key];
    else merged[key] = value;
  }
  return merged;
}

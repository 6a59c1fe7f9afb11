// The dashboard's only way to the portal: the public GraphQL API over HTTP, its subscriptions
// over graphql-transport-ws, and the export endpoint. The API key lives in this tab's session
// storage and nowhere else.

const KEY = "portal.apiKey";

export function apiKey() {
  try {
    return window.sessionStorage.getItem(KEY);
  } catch {
    return null;
  }
}

export function setApiKey(key) {
  window.sessionStorage.setItem(KEY, key);
}

export function forgetApiKey() {
  window.sessionStorage.removeItem(KEY);
}

// An error the API answered with: `code` is its `extensions.code` (UNAUTHENTICATED,
// FORBIDDEN, NOT_FOUND, INVALID_ARGUMENT, VERSION_CONFLICT, RATE_LIMITED, ...).
export class ApiError extends Error {
  constructor(message, { code = "UNKNOWN", status = 0, errors = [], data = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.status = status;
    this.errors = errors;
    this.data = data;
  }

  // The first error's extensions (field names, retry hints, ...).
  get extensions() {
    return (this.errors[0] && this.errors[0].extensions) || {};
  }
}

// Listeners told when the key is refused (the shell asks for another one).
const refusedListeners = new Set();
export function onKeyRefused(listener) {
  refusedListeners.add(listener);
  return () => refusedListeners.delete(listener);
}

function refused(error) {
  for (const listener of refusedListeners) listener(error);
}

function explain(errors) {
  return errors.map((e) => e.message).join("; ");
}

// Runs one query or mutation; resolves to `data`, or rejects with an ApiError for any error
// (field errors included: the dashboard shows an answer whole or says what went wrong).
export async function gql(query, variables = {}, { signal } = {}) {
  const key = apiKey();
  const headers = {
    "Content-Type": "application/json",
    Accept: "application/graphql-response+json, application/json",
  };
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch("/graphql", {
      method: "POST",
      headers,
      body: JSON.stringify({ query, variables }),
      signal,
      credentials: "omit",
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError("The portal cannot be reached; check your connection and retry.", {
      code: "NETWORK",
    });
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    throw new ApiError(`The portal answered ${response.status} without a GraphQL body.`, {
      code: "BAD_RESPONSE",
      status: response.status,
    });
  }
  const errors = body.errors || [];
  if (response.status === 401) {
    const error = new ApiError("This API key is not accepted (unknown, revoked or expired).", {
      code: "UNAUTHENTICATED",
      status: 401,
      errors,
    });
    refused(error);
    throw error;
  }
  if (errors.length) {
    const code = (errors[0].extensions && errors[0].extensions.code) || "UNKNOWN";
    if (code === "UNAUTHENTICATED") refused(errors[0]);
    throw new ApiError(explain(errors), {
      code,
      status: response.status,
      errors,
      data: body.data,
    });
  }
  return body.data;
}

// Runs a mutation whose payload carries `errors { code message field }`; those errors are
// thrown as an ApiError like the API's own, so one place shows both.
export async function mutate(query, variables, name, signal) {
  const data = await gql(query, variables, { signal });
  const payload = data[name];
  if (payload.errors && payload.errors.length) {
    throw new ApiError(payload.errors.map((e) => e.message).join("; "), {
      code: payload.errors[0].code,
      errors: payload.errors.map((e) => ({ ...e, extensions: { code: e.code, field: e.field } })),
    });
  }
  return payload;
}

function socketUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}/graphql`;
}

// A subscription that survives reconnects: after a drop it subscribes again from the last
// event's cursor (`variables.after`), so nothing is missed or shown twice. `cursorOf(data)`
// says where an answer's event sits. Returns a function that ends it.
export function subscribe(query, variables, { onData, onError, onStatus, cursorOf }) {
  let socket = null;
  let closed = false;
  let attempt = 0;
  let timer = null;
  let after = variables.after ?? null;
  const status = onStatus || (() => {});

  function open() {
    status("connecting");
    socket = new WebSocket(socketUrl(), "graphql-transport-ws");
    // The portal may send its JSON messages as binary frames: read them as UTF-8 text.
    socket.binaryType = "arraybuffer";
    socket.addEventListener("open", () => {
      const key = apiKey();
      socket.send(
        JSON.stringify({
          type: "connection_init",
          payload: key ? { Authorization: `Bearer ${key}` } : {},
        })
      );
    });
    socket.addEventListener("message", (event) => {
      const text =
        typeof event.data === "string" ? event.data : new TextDecoder().decode(event.data);
      const message = JSON.parse(text);
      switch (message.type) {
        case "connection_ack":
          attempt = 0;
          socket.send(
            JSON.stringify({
              id: "1",
              type: "subscribe",
              payload: { query, variables: { ...variables, after } },
            })
          );
          status("live");
          break;
        case "next":
          if (message.payload.errors && message.payload.errors.length) {
            onError(new ApiError(explain(message.payload.errors), {
              code: message.payload.errors[0].extensions?.code || "UNKNOWN",
              errors: message.payload.errors,
            }));
          } else {
            after = cursorOf(message.payload.data) ?? after;
            onData(message.payload.data);
          }
          break;
        case "error":
          onError(new ApiError(explain(message.payload), {
            code: message.payload[0]?.extensions?.code || "UNKNOWN",
            errors: message.payload,
          }));
          break;
        case "ping":
          socket.send(JSON.stringify({ type: "pong" }));
          break;
        default:
          break;
      }
    });
    socket.addEventListener("close", (event) => {
      if (closed) return;
      if (event.code === 4403) {
        status("refused");
        onError(new ApiError("The API key was refused for live updates.", {
          code: "UNAUTHENTICATED",
        }));
        return;
      }
      attempt += 1;
      const delay = Math.min(30000, 500 * 2 ** Math.min(attempt, 6));
      status("reconnecting");
      timer = window.setTimeout(open, delay);
    });
  }

  open();
  return () => {
    closed = true;
    if (timer) window.clearTimeout(timer);
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close(1000, "done");
    status("closed");
  };
}

// Downloads an export (CSV or Parquet) with the key in its header: the browser gets a file,
// the key never goes into an address. `params` are the PaymentFilter fields as query
// parameters (lists repeated).
export async function downloadExport(format, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value === null || value === undefined || value === "") continue;
    if (Array.isArray(value)) value.forEach((v) => query.append(name, v));
    else query.append(name, String(value));
  }
  const response = await fetch(`/exports/payments.${format}?${query}`, {
    headers: { Authorization: `Bearer ${apiKey()}` },
    credentials: "omit",
  });
  if (!response.ok) {
    let message = `The export failed (${response.status}).`;
    try {
      const body = await response.json();
      message = body.message || body.errors?.[0]?.message || message;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(message, { code: "EXPORT_FAILED", status: response.status });
  }
  const blob = await response.blob();
  const disposition = response.headers.get("content-disposition") || "";
  const match = /filename="?([^";]+)"?/.exec(disposition);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = match ? match[1] : `payments.${format}`;
  document.body.append(link);
  link.click();
  link.remove();
  window.setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  return blob.size;
}

// buntime frame SDK: the side of the frame protocol an app inside the shell's
// <z-frame> uses.  No dependencies; served by the runtime at
// /.well-known/buntime/ui/frame-sdk.js.  Import it with a static import so it
// is listening before the page's load event (when the shell sends INIT):
//
//   import { frameSDK } from "/.well-known/buntime/ui/frame-sdk.js";
//   frameSDK.register("refresh", () => load());
//   const props = await frameSDK.initialize();
//   frameSDK.on("theme", (theme) => ...);
//   frameSDK.emit("selected", { id: 3 });
//   await frameSDK.props.navigate("/cpanel/apps");   // a function the shell passed
//
// Messages (docs/shell.md): INIT (shell -> frame, on window.postMessage, with
// the MessagePort), then over the port READY (frame -> shell), PROPS_UPDATE
// and EVENT (shell -> frame), CUSTOM_EVENT (frame -> shell), FUNCTION_CALL and
// FUNCTION_RESPONSE (both ways).

export const PROTOCOL = 1;
const FUNCTION_MARK = "__zframeFunction";
const MAX_OUTBOX = 100; // events kept for a shell that has not connected yet

/** An Error rebuilt from what the other side sent ({name, message, stack}). */
export function toError(sent) {
  const error = new Error(sent && sent.message ? sent.message : String(sent));
  if (sent && sent.name) error.name = sent.name;
  if (sent && sent.stack) error.remoteStack = sent.stack;
  return error;
}

/** What travels for a thrown value: structured-clone safe. */
export function fromError(error) {
  if (error instanceof Error) return { name: error.name, message: error.message, stack: error.stack };
  return { name: "Error", message: String(error) };
}

/**
 * Replace function markers (as <z-frame> encodes them) in `value` with async
 * proxies made by `proxy(id)`; plain objects and arrays are walked.
 */
export function decodeProps(value, proxy) {
  if (Array.isArray(value)) return value.map((item) => decodeProps(item, proxy));
  if (value && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    if (typeof value[FUNCTION_MARK] === "string" && Object.keys(value).length === 1) {
      return proxy(value[FUNCTION_MARK]);
    }
    const out = {};
    for (const [key, item] of Object.entries(value)) out[key] = decodeProps(item, proxy);
    return out;
  }
  return value;
}

function createSDK(win) {
  const parent = win.parent;
  const inFrame = parent !== win;
  const listeners = new Map(); // event name -> Set of handlers
  const functions = new Map(); // name -> function the shell may call
  const watchers = new Set();
  const calls = new Map(); // call id -> {resolve, reject}
  const outbox = []; // messages emitted before the port arrived
  let port = null;
  let props = Object.freeze({});
  let origins = null; // set by initialize(); null: not asked yet
  let offered = null; // the latest INIT seen on the window, checked when initialize() runs
  let nextCall = 1;
  let resolveReady;
  let rejectReady;
  const ready = new Promise((resolve, reject) => {
    resolveReady = resolve;
    rejectReady = reject;
  });
  ready.catch(() => {});

  function send(message) {
    if (port) port.postMessage(message);
    else if (inFrame && outbox.length < MAX_OUTBOX) outbox.push(message); // alone: nobody to tell
  }

  function proxy(id) {
    return (...args) =>
      new Promise((resolve, reject) => {
        if (!port) {
          reject(new Error("frameSDK: not connected to the shell"));
          return;
        }
        const callId = nextCall++;
        calls.set(callId, { resolve, reject });
        try {
          port.postMessage({ type: "FUNCTION_CALL", callId, fn: id, args });
        } catch (error) {
          calls.delete(callId);
          reject(error); // e.g. a DataCloneError for an argument that cannot travel
        }
      });
  }

  function setProps(raw) {
    const previous = props;
    props = Object.freeze(decodeProps(raw || {}, proxy));
    for (const watcher of [...watchers]) {
      if (watcher.key !== undefined && Object.is(previous[watcher.key], props[watcher.key])) continue;
      try {
        if (watcher.key === undefined) watcher.fn(props, previous);
        else watcher.fn(props[watcher.key], previous[watcher.key]);
      } catch (error) {
        console.error("frameSDK: a watcher failed", error);
      }
    }
  }

  async function answer(message) {
    const fn = functions.get(message.fn);
    let reply;
    try {
      if (!fn) throw new Error(`No function "${message.fn}" is registered in this frame`);
      reply = { type: "FUNCTION_RESPONSE", callId: message.callId, ok: true, value: await fn(...(message.args || [])) };
    } catch (error) {
      reply = { type: "FUNCTION_RESPONSE", callId: message.callId, ok: false, error: fromError(error) };
    }
    try {
      port.postMessage(reply);
    } catch (error) {
      port.postMessage({ type: "FUNCTION_RESPONSE", callId: message.callId, ok: false, error: fromError(error) });
    }
  }

  function receive(event) {
    const message = event.data;
    if (!message || typeof message !== "object") return;
    switch (message.type) {
      case "PROPS_UPDATE":
        setProps(message.props);
        break;
      case "EVENT":
        for (const handler of [...(listeners.get(message.name) || [])]) {
          try {
            handler(message.detail);
          } catch (error) {
            console.error(`frameSDK: a handler of "${message.name}" failed`, error);
          }
        }
        break;
      case "FUNCTION_CALL":
        answer(message);
        break;
      case "FUNCTION_RESPONSE": {
        const pending = calls.get(message.callId);
        if (!pending) return;
        calls.delete(message.callId);
        if (message.ok) pending.resolve(message.value);
        else pending.reject(toError(message.error));
        break;
      }
      default:
        break;
    }
  }

  function allowed(origin) {
    return origins.includes("*") || origins.includes(origin);
  }

  function connect(offer) {
    if (!allowed(offer.origin)) {
      console.warn(`frameSDK: ignored INIT from ${offer.origin} (allowed: ${origins.join(", ")})`);
      return;
    }
    if (port) {
      port.close();
      for (const pending of calls.values()) pending.reject(new Error("frameSDK: the shell reconnected"));
      calls.clear();
    }
    port = offer.port;
    port.onmessage = receive;
    setProps(offer.data.props);
    port.postMessage({
      type: "READY",
      protocol: PROTOCOL,
      functions: [...functions.keys()],
      location: win.location.pathname + win.location.search + win.location.hash,
    });
    while (outbox.length) port.postMessage(outbox.shift());
    resolveReady(props);
  }

  // Listen from the first moment: the shell may send INIT before initialize() runs.
  if (inFrame) {
    win.addEventListener("message", (event) => {
      // only the window that holds this frame, only an INIT that hands a port over
      if (event.source !== parent) return;
      const data = event.data;
      if (!data || data.type !== "INIT" || !event.ports || !event.ports[0]) return;
      offered = { origin: event.origin, port: event.ports[0], data };
      if (origins !== null) connect(offered);
    });
  }

  // Report navigation inside the frame, so the shell's address follows it.
  function reportLocation() {
    if (port) send({ type: "CUSTOM_EVENT", name: "zframe:navigate", detail: { path: win.location.pathname + win.location.search + win.location.hash } });
  }
  for (const method of ["pushState", "replaceState"]) {
    const original = win.history[method];
    win.history[method] = function (...args) {
      const result = original.apply(this, args);
      reportLocation();
      return result;
    };
  }
  win.addEventListener("popstate", reportLocation);

  return {
    /** Whether the page runs inside a frame at all. */
    get inFrame() {
      return inFrame;
    },
    /** Whether the shell's INIT has been accepted. */
    get connected() {
      return port !== null;
    },
    /** The props the shell passed (functions among them are async proxies). */
    get props() {
      return props;
    },
    /**
     * Accept the shell's INIT (from `origins`, by default this page's own
     * origin), answer READY and resolve with the props.  Rejects after
     * `timeout` ms (default: never) and at once when the page is not in a frame.
     */
    initialize(options = {}) {
      if (origins === null) {
        origins = options.origins ? [...options.origins] : [win.location.origin];
        if (!inFrame) rejectReady(new Error("frameSDK: this page is not inside a frame"));
        else if (offered) connect(offered);
        if (options.timeout) {
          setTimeout(() => rejectReady(new Error(`frameSDK: no INIT from the shell within ${options.timeout} ms`)), options.timeout);
        }
      }
      return ready;
    },
    /** Tell the shell something happened (a CUSTOM_EVENT); queued until connected, dropped alone. */
    emit(name, detail) {
      send({ type: "CUSTOM_EVENT", name: String(name), detail });
    },
    /** Handle the shell's EVENTs named `name`; returns a function that stops it. */
    on(name, handler) {
      if (!listeners.has(name)) listeners.set(name, new Set());
      listeners.get(name).add(handler);
      return () => listeners.get(name).delete(handler);
    },
    /** Let the shell call `fn` as `name` (its result or error goes back); returns an unregister. */
    register(name, fn) {
      if (typeof fn !== "function") throw new TypeError(`frameSDK.register("${name}"): not a function`);
      functions.set(String(name), fn);
      return () => functions.delete(String(name));
    },
    /**
     * Call `fn(props, previous)` on every PROPS_UPDATE, or with a `key`,
     * `fn(value, previous)` when that prop changes; returns a function that stops it.
     */
    watch(key, fn) {
      const watcher = typeof key === "function" ? { key: undefined, fn: key } : { key, fn };
      watchers.add(watcher);
      return () => watchers.delete(watcher);
    },
    /** Ask the shell to show another page (a shell path such as "/cpanel/apps"). */
    navigate(path) {
      send({ type: "CUSTOM_EVENT", name: "zframe:open", detail: { path } });
    },
  };
}

export const frameSDK = createSDK(window);
export default frameSDK;

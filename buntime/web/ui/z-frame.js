// buntime <z-frame>: the shell's side of the frame protocol.  No dependencies;
// served by the runtime at /.well-known/buntime/ui/z-frame.js.
//
//   <script type="module" src="/.well-known/buntime/ui/z-frame.js"></script>
//   <z-frame src="/metrics/" ready-timeout="10000"></z-frame>
//
//   frame.props = { theme: "dark", navigate: (path) => router.go(path) };  // functions become proxies
//   frame.emit("refresh", { all: true });            // an EVENT for frameSDK.on("refresh")
//   await frame.call("summary");                     // a function the frame registered
//   frame.on("selected", (detail) => ...);           // the frame's frameSDK.emit("selected", ...)
//   frame.addEventListener("ready" | "timeout" | "navigate" | "frame-event", ...)
//
// When the frame's document loads, the element sends it INIT (its props and a
// MessagePort) with window.postMessage, addressed to the frame's origin only;
// everything else travels over that port.  A frame that has not answered
// READY within `ready-timeout` ms (default 10000) shows an error state.

const FUNCTION_MARK = "__zframeFunction";
const DEFAULT_TIMEOUT = 10000;

const STYLE = `
:host { display: block; position: relative; min-height: 8rem; }
iframe { display: block; width: 100%; height: 100%; border: 0; background: transparent; }
.status { position: absolute; inset: 0; display: flex; align-items: center; justify-content: center;
  padding: 1.5rem; background: var(--zframe-overlay, rgba(248, 249, 251, .92));
  font: 14px/1.5 var(--zframe-font, system-ui, sans-serif); color: var(--zframe-text, #1f2937); }
.status[hidden] { display: none; }
.box { max-width: 28rem; text-align: center; }
.box h2 { font-size: 1.05rem; margin: .75rem 0 .25rem; }
.box p { margin: 0 0 1rem; color: var(--zframe-muted, #6b7280); word-break: break-word; }
.spinner { width: 28px; height: 28px; margin: 0 auto; border-radius: 50%;
  border: 3px solid var(--zframe-track, #e5e7eb); border-top-color: var(--zframe-accent, #4f46e5);
  animation: spin .8s linear infinite; }
@keyframes spin { to { transform: rotate(360deg); } }
.icon { width: 40px; height: 40px; margin: 0 auto; border-radius: 50%; display: grid; place-items: center;
  background: var(--zframe-error-bg, #fef2f2); color: var(--zframe-error, #b91c1c); font-weight: 700; font-size: 1.2rem; }
button, a.button { font: inherit; padding: .45rem .9rem; border-radius: 8px; cursor: pointer; text-decoration: none;
  border: 1px solid var(--zframe-border, #d1d5db); background: #fff; color: inherit; margin: 0 .25rem; }
button.primary { background: var(--zframe-accent, #4f46e5); border-color: var(--zframe-accent, #4f46e5); color: #fff; }
`;

/** An Error rebuilt from what the frame sent ({name, message, stack}). */
function toError(sent) {
  const error = new Error(sent && sent.message ? sent.message : String(sent));
  if (sent && sent.name) error.name = sent.name;
  if (sent && sent.stack) error.remoteStack = sent.stack;
  return error;
}

/** What travels for a thrown value: structured-clone safe. */
function fromError(error) {
  if (error instanceof Error) return { name: error.name, message: error.message, stack: error.stack };
  return { name: "Error", message: String(error) };
}

/** `value` with every function swapped for a marker; `keep(id, fn)` remembers it. */
export function encodeProps(value, keep, path = "props") {
  if (typeof value === "function") {
    const id = `${path}`;
    keep(id, value);
    return { [FUNCTION_MARK]: id };
  }
  if (Array.isArray(value)) return value.map((item, index) => encodeProps(item, keep, `${path}.${index}`));
  if (value && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    const out = {};
    for (const [key, item] of Object.entries(value)) out[key] = encodeProps(item, keep, `${path}.${key}`);
    return out;
  }
  return value;
}

export class ZFrame extends HTMLElement {
  static get observedAttributes() {
    return ["src", "title"];
  }

  constructor() {
    super();
    this._props = {};
    this._functions = new Map(); // marker id -> shell function the frame may call
    this._handlers = new Map(); // CUSTOM_EVENT name -> Set of handlers
    this._calls = new Map(); // call id -> {resolve, reject}
    this._nextCall = 1;
    this._port = null;
    this._timer = null;
    this.state = "idle";
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = `<style>${STYLE}</style><iframe part="frame"></iframe><div class="status" part="status" hidden></div>`;
    this._status = root.querySelector(".status");
    this._iframe = null;
  }

  connectedCallback() {
    if (!this._loadedSrc && this.getAttribute("src")) this._load();
  }

  disconnectedCallback() {
    this._disconnect(new Error("The frame was removed"));
    clearTimeout(this._timer);
  }

  attributeChangedCallback(name, previous, value) {
    if (name === "title" && this._iframe) this._iframe.title = value || "";
    if (name === "src" && this.isConnected && value !== this._loadedSrc) this._load();
  }

  get src() {
    return this.getAttribute("src") || "";
  }

  set src(value) {
    this.setAttribute("src", value);
  }

  /** The frame's origin: INIT goes there and nowhere else. */
  get frameOrigin() {
    return new URL(this.src, document.baseURI).origin;
  }

  get readyTimeout() {
    const value = Number(this.getAttribute("ready-timeout"));
    return Number.isFinite(value) && value > 0 ? value : DEFAULT_TIMEOUT;
  }

  /** The iframe element (inside the shadow root). */
  get iframe() {
    return this._iframe;
  }

  get props() {
    return this._props;
  }

  /** New props for the frame: sent with the next INIT, and now as PROPS_UPDATE when connected. */
  set props(value) {
    this._props = value || {};
    if (this._port) this._port.postMessage({ type: "PROPS_UPDATE", props: this._encode() });
  }

  /** An EVENT for the frame's `frameSDK.on(name, ...)` handlers. */
  emit(name, detail) {
    if (!this._port) throw new Error("z-frame: the frame is not ready");
    this._port.postMessage({ type: "EVENT", name: String(name), detail });
  }

  /** Call a function the frame registered with `frameSDK.register(name, fn)`. */
  call(name, ...args) {
    return new Promise((resolve, reject) => {
      if (!this._port) {
        reject(new Error("z-frame: the frame is not ready"));
        return;
      }
      const callId = this._nextCall++;
      this._calls.set(callId, { resolve, reject });
      try {
        this._port.postMessage({ type: "FUNCTION_CALL", callId, fn: String(name), args });
      } catch (error) {
        this._calls.delete(callId);
        reject(error);
      }
    });
  }

  /** Handle the frame's `frameSDK.emit(name, detail)`; returns a function that stops it. */
  on(name, handler) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(handler);
    return () => this._handlers.get(name).delete(handler);
  }

  /** Load the frame again from its `src`. */
  reload() {
    this._load();
  }

  _encode() {
    this._functions.clear();
    return encodeProps(this._props, (id, fn) => this._functions.set(id, fn));
  }

  _load() {
    this._disconnect(new Error("The frame was reloaded"));
    const src = this.src;
    this._loadedSrc = src;
    // a new iframe each time: the old one's history entries go with it
    const iframe = document.createElement("iframe");
    iframe.setAttribute("part", "frame");
    iframe.title = this.getAttribute("title") || "";
    iframe.addEventListener("load", () => this._loaded(iframe));
    if (this._iframe) this._iframe.replaceWith(iframe);
    else this.shadowRoot.querySelector("iframe").replaceWith(iframe);
    this._iframe = iframe;
    this._setState("loading");
    this._arm();
    if (src) iframe.src = src;
  }

  _arm() {
    clearTimeout(this._timer);
    const timeout = this.readyTimeout;
    this._timer = setTimeout(() => this._timedOut(timeout), timeout);
  }

  _loaded(iframe) {
    if (iframe !== this._iframe || !iframe.contentWindow) return;
    // each document gets its own channel (a navigation inside the frame starts over)
    this._disconnect(new Error("The frame navigated"));
    if (this.state !== "error") this._setState("loading");
    this._arm();
    const channel = new MessageChannel();
    this._port = null;
    this._pending = channel.port1;
    channel.port1.onmessage = (event) => this._receive(channel.port1, event.data);
    const init = { type: "INIT", protocol: 1, props: this._encode() };
    try {
      iframe.contentWindow.postMessage(init, this.frameOrigin, [channel.port2]);
    } catch (error) {
      this._fail(`The shell could not talk to this page: ${error.message}`);
    }
  }

  _receive(port, message) {
    if (!message || typeof message !== "object") return;
    if (message.type === "READY") {
      if (port !== this._pending) return;
      this._port = port;
      clearTimeout(this._timer);
      this._setState("ready");
      this.dispatchEvent(new CustomEvent("ready", { detail: { functions: message.functions || [], location: message.location } }));
      if (message.location) this._navigated(message.location);
      return;
    }
    if (port !== this._port) return;
    switch (message.type) {
      case "CUSTOM_EVENT":
        this._custom(message.name, message.detail);
        break;
      case "FUNCTION_CALL":
        this._answer(message);
        break;
      case "FUNCTION_RESPONSE": {
        const pending = this._calls.get(message.callId);
        if (!pending) return;
        this._calls.delete(message.callId);
        if (message.ok) pending.resolve(message.value);
        else pending.reject(toError(message.error));
        break;
      }
      default:
        break;
    }
  }

  _custom(name, detail) {
    if (name === "zframe:navigate") {
      this._navigated(detail && detail.path);
      return;
    }
    if (name === "zframe:open") {
      this.dispatchEvent(new CustomEvent("open", { detail: { path: detail && detail.path } }));
      return;
    }
    for (const handler of [...(this._handlers.get(name) || [])]) {
      try {
        handler(detail);
      } catch (error) {
        console.error(`z-frame: a handler of "${name}" failed`, error);
      }
    }
    this.dispatchEvent(new CustomEvent("frame-event", { detail: { name, detail } }));
  }

  _navigated(path) {
    if (typeof path === "string") this.dispatchEvent(new CustomEvent("navigate", { detail: { path } }));
  }

  async _answer(message) {
    const port = this._port;
    const fn = this._functions.get(message.fn);
    let reply;
    try {
      if (!fn) throw new Error(`No function "${message.fn}" among the props`);
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

  _disconnect(reason) {
    for (const port of [this._port, this._pending]) if (port) port.close();
    this._port = null;
    this._pending = null;
    for (const pending of this._calls.values()) pending.reject(reason);
    this._calls.clear();
  }

  _timedOut(timeout) {
    this._fail(`This page did not connect to the shell within ${Math.round(timeout / 1000)} s.`);
    this.dispatchEvent(new CustomEvent("timeout", { detail: { src: this.src, timeout } }));
  }

  _fail(text) {
    this._setState("error");
    const box = document.createElement("div");
    box.className = "box";
    box.setAttribute("role", "alert");
    box.innerHTML = `<div class="icon">!</div><h2>This page is not responding</h2><p></p>
      <button class="primary" type="button">Try again</button><a class="button" target="_blank" rel="noopener">Open it alone</a>`;
    box.querySelector("p").textContent = text;
    box.querySelector("button").addEventListener("click", () => this.reload());
    box.querySelector("a").href = this.src;
    this._status.replaceChildren(box);
  }

  _setState(state) {
    this.state = state;
    this.setAttribute("state", state);
    if (state === "loading") {
      this._status.innerHTML = `<div class="box" aria-live="polite"><div class="spinner"></div><p>Loading…</p></div>`;
      this._status.hidden = false;
    } else if (state === "ready") {
      this._status.hidden = true;
    } else if (state === "error") {
      this._status.hidden = false;
    }
  }
}

if (!customElements.get("z-frame")) customElements.define("z-frame", ZFrame);

// Unit tests of z-frame.js and frame-sdk.js, run in the browser; the results
// land in window.__results ([{name, ok, error}]) and window.__done.
import { encodeProps, ZFrame } from "/.well-known/buntime/ui/z-frame.js";
import { decodeProps, frameSDK } from "/.well-known/buntime/ui/frame-sdk.js";

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

function equal(actual, expected, message = "") {
  const a = JSON.stringify(actual);
  const b = JSON.stringify(expected);
  if (a !== b) throw new Error(`${message} expected ${b}, got ${a}`);
}

function waitFor(target, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "${event}" within ${ms} ms`)), ms);
    target.addEventListener(event, (e) => {
      clearTimeout(timer);
      resolve(e);
    }, { once: true });
  });
}

async function rejects(promise, check) {
  try {
    await promise;
  } catch (error) {
    check(error);
    return;
  }
  throw new Error("expected a rejection");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A <z-frame> on `src`, in the document, waiting for READY unless told not to. */
async function frame(src, { props, timeout, wait = true } = {}) {
  const element = document.createElement("z-frame");
  if (timeout) element.setAttribute("ready-timeout", String(timeout));
  if (props) element.props = props;
  element.style.height = "60px";
  const ready = wait ? waitFor(element, "ready") : null;
  element.setAttribute("src", src);
  document.body.append(element);
  if (ready) await ready;
  return element;
}

// -- the codecs -----------------------------------------------------------------

test("encodeProps swaps functions (nested too) for markers and keeps the rest", () => {
  const kept = new Map();
  const fn = () => 1;
  const encoded = encodeProps({ a: 1, f: fn, nested: { list: [fn, "x"] }, when: null }, (id, f) => kept.set(id, f));
  equal(encoded, { a: 1, f: { __zframeFunction: "props.f" }, nested: { list: [{ __zframeFunction: "props.nested.list.0" }, "x"] }, when: null });
  equal([...kept.keys()], ["props.f", "props.nested.list.0"]);
  assert(kept.get("props.f") === fn, "the function is kept");
});

test("decodeProps turns markers into proxies and leaves data alone", () => {
  const decoded = decodeProps({ n: 2, f: { __zframeFunction: "props.f" }, list: [{ __zframeFunction: "x" }], plain: { __zframeFunction: "y", other: 1 } }, (id) => `proxy:${id}`);
  equal(decoded, { n: 2, f: "proxy:props.f", list: ["proxy:x"], plain: { __zframeFunction: "y", other: 1 } });
});

test("z-frame is defined once as a custom element", () => {
  assert(customElements.get("z-frame") === ZFrame, "z-frame is the ZFrame class");
});

test("the SDK outside a frame: not in a frame, initialize rejects", async () => {
  assert(frameSDK.inFrame === false, "the test page is not framed");
  await rejects(frameSDK.initialize(), (error) => assert(/not inside a frame/.test(error.message), error.message));
});

// -- INIT and READY ---------------------------------------------------------------

test("INIT carries the props; READY names the frame's functions and location", async () => {
  const element = document.createElement("z-frame");
  element.props = { label: "first", count: 1 };
  const ready = waitFor(element, "ready");
  const initialized = new Promise((resolve) => element.on("initialized", resolve));
  element.setAttribute("src", "child.html");
  document.body.append(element);
  const event = await ready;
  assert(event.detail.functions.includes("echo"), "READY lists echo");
  assert(event.detail.location.endsWith("/child.html"), event.detail.location);
  equal(element.state, "ready");
  equal(element.getAttribute("state"), "ready");
  equal(await initialized, { label: "first" });
  equal((await element.call("props")).label, "first");
  element.remove();
});

test("an event the frame emits before READY arrives after it", async () => {
  const element = document.createElement("z-frame");
  const early = new Promise((resolve) => element.on("early", resolve));
  element.setAttribute("src", "child.html");
  document.body.append(element);
  equal(await early, { before: "initialize" });
  element.remove();
});

test("events emitted before READY are kept up to a bound, the first ones first", async () => {
  const element = document.createElement("z-frame");
  const got = [];
  element.on("n", (n) => got.push(n));
  const ready = waitFor(element, "ready");
  element.setAttribute("src", "burst.html");
  element.style.height = "60px";
  document.body.append(element);
  await ready;
  await sleep(100); // the queued events follow READY on the same port
  equal(got.length, 100, "kept");
  equal([got[0], got[99]], [0, 99], "first and last");
  element.remove();
});

test("a frame that calls initialize() late still gets the INIT sent at load", async () => {
  const element = await frame("late.html");
  equal(await element.call("where"), "late");
  element.remove();
});

// -- functions both ways -------------------------------------------------------------

test("the shell calls a function the frame registered", async () => {
  const element = await frame("child.html");
  equal(await element.call("echo", 1, "two", { three: [3] }), [1, "two", { three: [3] }]);
  equal(await element.call("slow", 50), "slept");
  element.remove();
});

test("an error thrown in the frame rejects the shell's call, with its name and message", async () => {
  const element = await frame("child.html");
  await rejects(element.call("fail"), (error) => {
    assert(error instanceof Error, "an Error");
    equal(error.name, "TypeError");
    equal(error.message, "it broke");
  });
  await rejects(element.call("nothing"), (error) => assert(/No function "nothing"/.test(error.message), error.message));
  element.remove();
});

test("an argument that cannot travel rejects the call", async () => {
  const element = await frame("child.html");
  await rejects(element.call("echo", () => 1), (error) => equal(error.name, "DataCloneError"));
  element.remove();
});

test("functions passed as props become async proxies in the frame", async () => {
  const calls = [];
  const element = await frame("child.html", {
    props: {
      label: "fn",
      add: (a, b) => { calls.push([a, b]); return a + b; },
      later: async (x) => { await sleep(20); return `later ${x}`; },
      nested: { deep: [(x) => x * 10] },
      explode: (what) => { throw new RangeError(`exploded: ${what}`); },
    },
  });
  const kinds = (await element.call("props")).kinds;
  equal([kinds.add, kinds.later, kinds.label], ["function", "function", "string"]);
  equal(await element.call("callProp", "add", 2, 3), 5);
  equal(calls, [[2, 3]]);
  equal(await element.call("callProp", "later", "x"), "later x");
  equal(await element.call("callNested", 4), 40);
  equal(await element.call("callPropFailing"), { name: "RangeError", message: "exploded: boom", isError: true });
  element.remove();
});

// -- props, events, navigation -----------------------------------------------------------

test("PROPS_UPDATE reaches watch(fn) and watch(key, fn) (only when that key changes)", async () => {
  const element = await frame("child.html", { props: { label: "a", count: 1 } });
  element.props = { label: "b", count: 1 };
  element.props = { label: "c", count: 2 };
  await sleep(50);
  const { seen, keyed } = await element.call("seen");
  equal(seen.slice(-2), [{ label: "b", previous: "a" }, { label: "c", previous: "b" }]);
  equal(keyed.slice(-1), [[2, 1]]);
  equal((await element.call("props")).count, 2);
  element.remove();
});

test("emit sends an EVENT; the frame's CUSTOM_EVENT comes back to on() and as a DOM event", async () => {
  const element = await frame("child.html");
  const pong = new Promise((resolve) => element.on("pong", resolve));
  const dom = new Promise((resolve) => element.addEventListener("frame-event", (e) => e.detail.name === "pong" && resolve(e)));
  element.emit("ping", { n: 1 });
  equal(await pong, { n: 2 });
  equal((await dom).detail, { name: "pong", detail: { n: 2 } });
  element.remove();
});

test("navigation inside the frame is reported to the shell", async () => {
  const element = await frame("child.html");
  const navigated = waitFor(element, "navigate");
  equal(await element.call("go", "/frame-tests/child.html?page=2"), "/frame-tests/child.html");
  equal((await navigated).detail.path, "/frame-tests/child.html?page=2");
  element.remove();
});

test("reload() starts a new connection and rejects the calls in flight", async () => {
  const element = await frame("child.html");
  const pending = element.call("slow", 2000);
  const ready = waitFor(element, "ready");
  element.reload();
  await rejects(pending, (error) => assert(/reloaded/.test(error.message), error.message));
  await ready;
  equal(await element.call("echo", "again"), ["again"]);
  element.remove();
});

test("calling a frame that is not ready rejects; removing one rejects its calls", async () => {
  const element = await frame("silent.html", { wait: false, timeout: 5000 });
  await rejects(element.call("echo"), (error) => assert(/not ready/.test(error.message), error.message));
  element.remove();
  const live = await frame("child.html");
  const pending = live.call("slow", 2000);
  live.remove();
  await rejects(pending, (error) => assert(/removed/.test(error.message), error.message));
});

// -- origins and the READY timeout ------------------------------------------------------------

test("a frame that never sends READY shows an error state after the timeout", async () => {
  const element = await frame("silent.html", { wait: false, timeout: 400 });
  equal(element.state, "loading");
  const timeout = await waitFor(element, "timeout", 3000);
  equal(timeout.detail.timeout, 400);
  equal(element.state, "error");
  const alert = element.shadowRoot.querySelector("[role=alert]");
  assert(alert && /not responding/.test(alert.textContent), "an alert says so");
  assert(alert.querySelector("button").textContent.includes("Try again"), "with a retry button");
  element.remove();
});

test("the frame's SDK ignores an INIT from an origin it does not allow", async () => {
  const element = await frame("strict.html?allow=http://elsewhere.example", { wait: false, timeout: 600 });
  await waitFor(element, "timeout", 3000);
  equal(element.state, "error");
  element.remove();
  const allowed = await frame(`strict.html?allow=${encodeURIComponent(location.origin)}`);
  equal(await allowed.call("origin"), location.origin);
  allowed.remove();
});

test("INIT goes to the frame's origin only: a cross-origin frame must allow the shell's origin", async () => {
  // 127.0.0.1 and localhost are two origins of the same runtime
  const other = new URL(location.href);
  other.hostname = other.hostname === "localhost" ? "127.0.0.1" : "localhost";
  const page = `${other.origin}/frame-tests/strict.html`;
  const refused = await frame(page, { wait: false, timeout: 800 });
  equal(refused.frameOrigin, other.origin);
  await waitFor(refused, "timeout", 4000); // the frame only trusts its own origin by default
  refused.remove();
  const accepted = await frame(`${page}?allow=${encodeURIComponent(location.origin)}`, { timeout: 4000 });
  equal(await accepted.call("origin"), other.origin);
  accepted.remove();
});

// -- run -------------------------------------------------------------------------------------

async function run() {
  const results = [];
  const list = document.getElementById("results");
  for (const { name, fn } of tests) {
    let result;
    try {
      await fn();
      result = { name, ok: true };
    } catch (error) {
      result = { name, ok: false, error: `${error.name}: ${error.message}` };
    }
    results.push(result);
    const item = document.createElement("li");
    item.textContent = `${result.ok ? "ok" : "FAIL"} ${name}${result.error ? ` — ${result.error}` : ""}`;
    list.append(item);
  }
  window.__results = results;
  window.__done = true;
}

run();

// Helpers for browser tests: Debian's chromium, headless, driven by playwright-core.
//
// playwright-core never downloads a browser; we point it at the system chromium
// (`apt-get install chromium`, done by scripts/browser.sh install). A test is
//
//   import { run, launch, open, waitForText, screenshot } from "./lib.mjs";
//   await run("dashboard", async ({ browser }) => {
//     const page = await open(browser, "http://127.0.0.1:8082/");
//     const before = await waitForText(page, "#today-clicks", /\d+/);
//     await fetch(...POST an event...);
//     await waitForText(page, "#today-clicks", (t) => t !== before);
//     await screenshot(page, "dashboard");
//   });
//
// `run` launches the browser, closes it whatever happens, keeps a failure
// screenshot and sets a non-zero exit code on failure. Screenshots go under
// target/browser/ of the repository (BROWSER_ARTIFACTS_DIR overrides).

import { chromium } from "playwright-core";
import { existsSync, mkdirSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

/** The repository root (e2e/browser/../..). */
export const repoRoot = resolve(here, "..", "..");

/** Where screenshots go: target/browser/ unless BROWSER_ARTIFACTS_DIR says otherwise. */
export const artifactsDir = process.env.BROWSER_ARTIFACTS_DIR ?? join(repoRoot, "target", "browser");

/** The chromium binary: CHROMIUM_PATH, else Debian's. Throws with the fix when missing. */
export function chromiumPath() {
  const candidates = [process.env.CHROMIUM_PATH, "/usr/bin/chromium", "/usr/bin/chromium-browser"];
  const found = candidates.find((p) => p && existsSync(p));
  if (!found) {
    throw new Error("no chromium found (set CHROMIUM_PATH, or run scripts/browser.sh install)");
  }
  return found;
}

// --no-sandbox: chromium refuses to start its sandbox as root. The networking
// flags stop chromium's own calls home (updates, sync, field trials), which the
// closed network here refuses noisily and which a test must not depend on.
const CHROMIUM_ARGS = [
  "--disable-gpu",
  "--disable-dev-shm-usage",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-default-apps",
  "--metrics-recording-only",
];

/**
 * Starts headless chromium. `headless: false` needs a display (Xvfb).
 * @returns {Promise<import("playwright-core").Browser>}
 */
export async function launch({ headless = true, args = [] } = {}) {
  const sandbox = process.getuid?.() === 0 ? ["--no-sandbox"] : [];
  return chromium.launch({
    executablePath: chromiumPath(),
    headless,
    args: [...sandbox, ...CHROMIUM_ARGS, ...args],
  });
}

/**
 * Opens `url` in a fresh context (own cookies and storage) and waits for the
 * load event. The returned page records, on `page.diagnostics`:
 * - `errors`: uncaught page errors and console errors;
 * - `foreignRequests`: requests to any origin other than `url`'s (the
 *   dashboard must make none);
 * - `navigations`: main-frame navigations after the first load (a reload
 *   shows up here).
 * @returns {Promise<import("playwright-core").Page & {diagnostics: {errors: string[], foreignRequests: string[], navigations: string[]}}>}
 */
export async function open(browser, url, { width = 1280, height = 800, timeoutMs = 15_000 } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  page.setDefaultTimeout(timeoutMs);
  const origin = new URL(url).origin;
  const diagnostics = { errors: [], foreignRequests: [], navigations: [] };
  page.on("pageerror", (e) => diagnostics.errors.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") diagnostics.errors.push(`console: ${m.text()}`);
  });
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith("data:") && !u.startsWith("blob:") && new URL(u).origin !== origin) {
      diagnostics.foreignRequests.push(u);
    }
  });
  let loaded = false;
  page.on("framenavigated", (f) => {
    if (f === page.mainFrame() && loaded) diagnostics.navigations.push(f.url());
  });
  await page.goto(url, { waitUntil: "load" });
  loaded = true;
  page.diagnostics = diagnostics;
  return page;
}

/**
 * Waits until the text of the first element matching `selector` satisfies
 * `expected`: a string (equal after trimming), a RegExp, or a predicate on
 * the trimmed text. Returns that text; on timeout throws with the last text seen.
 */
export async function waitForText(page, selector, expected, { timeoutMs = 10_000, pollMs = 50 } = {}) {
  const matches =
    typeof expected === "function"
      ? expected
      : expected instanceof RegExp
        ? (t) => expected.test(t)
        : (t) => t === String(expected);
  const deadline = Date.now() + timeoutMs;
  let last = "(no element)";
  for (;;) {
    const text = await page
      .locator(selector)
      .first()
      .textContent({ timeout: Math.max(1, Math.min(pollMs * 4, deadline - Date.now())) })
      .catch(() => null);
    if (text !== null) {
      last = text.trim();
      if (matches(last)) return last;
    }
    if (Date.now() >= deadline) {
      throw new Error(`waitForText(${selector}): wanted ${describe(expected)}, last saw ${JSON.stringify(last)} after ${timeoutMs} ms`);
    }
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

function describe(expected) {
  if (typeof expected === "function") return `text passing ${expected.toString()}`;
  if (expected instanceof RegExp) return `text matching ${expected}`;
  return JSON.stringify(String(expected));
}

/** Saves a full-page PNG as <artifactsDir>/<name>.png and returns its path. */
export async function screenshot(page, name) {
  mkdirSync(artifactsDir, { recursive: true });
  const path = join(artifactsDir, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/**
 * A tiny HTTP server on 127.0.0.1 and a free port, for pages a test serves
 * itself. `handler` is node's (req, res). Returns { url, close }.
 */
export async function serve(handler) {
  const server = createServer(handler);
  const sockets = new Set();
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise((ok, fail) => server.listen(0, "127.0.0.1", ok).on("error", fail));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    // Open SSE streams would keep close() waiting for ever: end them.
    close: () =>
      new Promise((ok) => {
        for (const s of sockets) s.destroy();
        server.close(() => ok());
      }),
  };
}

/**
 * Runs one browser test: launches chromium, calls `test({ browser })`, keeps
 * target/browser/<name>-failure.png of the last page opened if it throws,
 * always closes the browser, logs the outcome and sets process.exitCode.
 */
export async function run(name, test) {
  const started = Date.now();
  let browser;
  try {
    browser = await launch();
    await test({ browser });
    console.log(`ok: ${name} (${Date.now() - started} ms, chromium ${browser.version()})`);
  } catch (e) {
    process.exitCode = 1;
    console.error(`FAILED: ${name}: ${e?.stack ?? e}`);
    const page = browser?.contexts().flatMap((c) => c.pages()).at(-1);
    if (page) {
      const path = await screenshot(page, `${name}-failure`).catch(() => null);
      if (path) console.error(`failure screenshot: ${path}`);
    }
  } finally {
    await browser?.close().catch(() => {});
  }
}
